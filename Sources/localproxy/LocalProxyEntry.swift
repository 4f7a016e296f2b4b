import CLibC
import LocalProxy

@main
struct LocalProxyEntry {
    static func main() {
        exit(LocalProxyMain.run(arguments: SystemAccess.arguments()))
    }
}
