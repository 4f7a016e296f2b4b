import Foundation
import TunnelService

/// The emulator's entry point; everything else lives in the TunnelService library so that tests
/// can reach it.
@main
struct TunnelServiceEntry {
    static func main() {
        exit(TunnelServiceMain.run(arguments: Array(CommandLine.arguments.dropFirst())))
    }
}
