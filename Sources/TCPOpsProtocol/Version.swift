// The version both executables print (`--version`), with the git revision when built from a
// checkout by `make` (which passes it to the C shim as TCPOPS_GIT_REVISION).
import CShims

public enum TCPOpsVersion {
    public static let version = "0.3.0"

    /// The short git revision the binary was built from, if known.
    public static var revision: String? {
        let r = String(cString: tcpops_git_revision())
        return r.isEmpty ? nil : r
    }

    /// "tcpopsd 0.3.0 (git 1a2b3c4)".
    public static func line(_ program: String) -> String {
        "\(program) \(version)" + (revision.map { " (git \($0))" } ?? "")
    }
}
