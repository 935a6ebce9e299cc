/// The version of every limiquantix binary and of the agent's `Welcome` (one source for all).
public enum LimiquantixVersion {
    /// Semantic version of this tree; packaging appends the commit (`0.1.0~git…`).
    public static let current = "0.1.0"
}
