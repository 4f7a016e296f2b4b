import CLibUV

@main
struct CoreSelfTest {
    static func main() {
        exit(runSelfTest())
    }
}
