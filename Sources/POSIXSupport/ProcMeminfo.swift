/// `/proc/meminfo`, read the one way for the guest agent's telemetry and the node's inventory and
/// metrics: `Key: value [kB|mB|gB]` lines, values in bytes (saturating), unparsable lines skipped.
public enum ProcMeminfo {
    /// The values by key (`MemTotal`, `MemAvailable`, `HugePages_Total`, …), in bytes where the
    /// line has a unit and as written where it has none (page counts).
    public static func parse(_ text: String) -> [String: UInt64] {
        var values: [String: UInt64] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let rest = line[line.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let number = rest.first, let value = UInt64(number) else { continue }
            var bytes = value
            if rest.count > 1 {
                let unit: UInt64? =
                    switch rest[1].lowercased() {
                    case "kb": 1 << 10
                    case "mb": 1 << 20
                    case "gb": 1 << 30
                    default: nil
                    }
                if let unit {
                    let (product, overflow) = value.multipliedReportingOverflow(by: unit)
                    bytes = overflow ? .max : product
                }
            }
            values[String(line[..<colon])] = bytes
        }
        return values
    }
}
