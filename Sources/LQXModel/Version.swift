import CLQXVersion

/// The version of every limiquantix binary and of the agent's `Welcome` (one source for all).
public enum LimiquantixVersion {
    /// Semantic version of this tree, or the package's (`0.1.0~git…`): set in
    /// `Sources/CLQXVersion/version.c`, which the Debian build rewrites.
    public static let current = String(cString: lqx_version())
}
