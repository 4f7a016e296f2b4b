import CLibC

@main
struct CoreSelfTest {
    static func main() {
        exit(runSelfTest())
    }
}
