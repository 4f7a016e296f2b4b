/// The proxy's version, printed by --version and sent in the User-Agent.
public enum LocalProxyVersion {
    public static let string = "0.1.0"
}
