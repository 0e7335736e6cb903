/// Durations as configuration and people write them: `90s`, `15m`, `36h`,
/// `30d`, `2w`, `500ms`, and sums such as `1h30m` or `1d 12h`.
public enum DurationFormat {
    /// Why a duration text was refused.
    public struct ParseError: Error, Sendable, Hashable, CustomStringConvertible {
        public var description: String
    }

    private static let units: [(suffix: String, milliseconds: Int64)] = [
        ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000), ("w", 604_800_000),
    ]

    /// Parses `text` into a duration. A bare `0` is allowed; every other number needs a unit.
    public static func parse(_ text: String) throws(ParseError) -> Duration {
        let trimmed = text.filter { $0 != " " }
        guard !trimmed.isEmpty else { throw ParseError(description: "empty duration; write it like 90s, 15m, 36h or 30d") }
        if trimmed == "0" { return .zero }
        var total: Int64 = 0
        var rest = Substring(trimmed)
        while !rest.isEmpty {
            let digits = rest.prefix { $0.isASCII && $0.isNumber }
            guard !digits.isEmpty, let value = Int64(digits) else {
                throw ParseError(description: "invalid duration '\(text)': expected a number at '\(rest)'; write it like 90s, 15m, 36h or 30d")
            }
            rest = rest.dropFirst(digits.count)
            let unitText = rest.prefix { $0.isLetter }
            rest = rest.dropFirst(unitText.count)
            guard let unit = units.first(where: { $0.suffix == unitText }) else {
                throw ParseError(
                    description: unitText.isEmpty
                        ? "invalid duration '\(text)': '\(digits)' needs a unit (ms, s, m, h, d or w)"
                        : "invalid duration '\(text)': unknown unit '\(unitText)' (use ms, s, m, h, d or w)")
            }
            let (product, overflow1) = value.multipliedReportingOverflow(by: unit.milliseconds)
            let (sum, overflow2) = total.addingReportingOverflow(product)
            guard !overflow1, !overflow2, sum < 1_000 * 86_400_000 * 365 * 100 else {
                throw ParseError(description: "invalid duration '\(text)': too long")
            }
            total = sum
        }
        return .milliseconds(total)
    }

    /// The shortest exact text for `duration` in the parse format: `15m`, `30d`, `1h30m`, `250ms`.
    public static func format(_ duration: Duration) -> String {
        var ms = duration.milliseconds
        if ms == 0 { return "0s" }
        let sign = ms < 0 ? "-" : ""
        ms = abs(ms)
        var parts: [String] = []
        for unit in [("d", Int64(86_400_000)), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] where ms >= unit.1 {
            parts.append("\(ms / unit.1)\(unit.0)")
            ms %= unit.1
        }
        return sign + parts.joined()
    }

    /// A duration for people, the two largest units: `12d 4h`, `3h 5m`, `42s`.
    public static func human(seconds: Double) -> String {
        let negative = seconds < 0
        let s = Int64(abs(seconds).rounded(.down))
        let units: [(String, Int64)] = [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)]
        var parts: [String] = []
        if let first = units.firstIndex(where: { s >= $0.1 }) {
            parts.append("\(s / units[first].1)\(units[first].0)")
            if first + 1 < units.count {
                let next = units[first + 1]
                let value = s % units[first].1 / next.1
                if value > 0 { parts.append("\(value)\(next.0)") }
            }
        }
        let text = parts.isEmpty ? "0s" : parts.joined(separator: " ")
        return negative ? "-" + text : text
    }
}
