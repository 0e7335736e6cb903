#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// RFC 3339 timestamps as the contract puts them on the wire: UTC with
/// milliseconds, `2026-11-26T15:00:00.000Z`. Parsing also accepts other
/// offsets and any number of fractional digits (or none).
public enum RFC3339 {
    /// Formats `date` in UTC with milliseconds (rounded to the nearest millisecond).
    public static func format(_ date: Date) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(24)
        append(milliseconds: Int64((date.timeIntervalSince1970 * 1000).rounded()), into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends the instant `totalMilliseconds` after 1970 as `format` writes it (the JSON
    /// encoder writes dates straight into its output with this).
    public static func append(milliseconds totalMilliseconds: Int64, into out: inout [UInt8]) {
        var days = totalMilliseconds / 86_400_000
        var msOfDay = totalMilliseconds % 86_400_000
        if msOfDay < 0 {
            msOfDay += 86_400_000
            days -= 1
        }
        let (year, month, day) = civil(fromDays: days)
        let hour = msOfDay / 3_600_000
        let minute = msOfDay / 60_000 % 60
        let second = msOfDay / 1000 % 60
        let millisecond = msOfDay % 1000
        pad(year, 4, into: &out)
        out.append(UInt8(ascii: "-"))
        pad(month, 2, into: &out)
        out.append(UInt8(ascii: "-"))
        pad(day, 2, into: &out)
        out.append(UInt8(ascii: "T"))
        pad(hour, 2, into: &out)
        out.append(UInt8(ascii: ":"))
        pad(minute, 2, into: &out)
        out.append(UInt8(ascii: ":"))
        pad(second, 2, into: &out)
        out.append(UInt8(ascii: "."))
        pad(millisecond, 3, into: &out)
        out.append(UInt8(ascii: "Z"))
    }

    /// Parses an RFC 3339 date-time; `nil` when `text` is not one.
    public static func parse(_ text: String) -> Date? {
        var text = text
        return text.withUTF8 { parse(bytes: $0) }
    }

    /// `parse` on UTF-8 bytes (the heartbeat fast path reads dates without making strings).
    public static func parse(bytes b: UnsafeBufferPointer<UInt8>) -> Date? {
        func number(_ start: Int, _ count: Int) -> Int64? {
            guard start + count <= b.count else { return nil }
            var value: Int64 = 0
            for i in start..<(start + count) {
                let c = b[i]
                guard c >= 48, c <= 57 else { return nil }
                value = value * 10 + Int64(c - 48)
            }
            return value
        }
        guard b.count >= 20,
            let year = number(0, 4), b[4] == UInt8(ascii: "-"), let month = number(5, 2), b[7] == UInt8(ascii: "-"),
            let day = number(8, 2), b[10] == UInt8(ascii: "T") || b[10] == UInt8(ascii: "t") || b[10] == UInt8(ascii: " "),
            let hour = number(11, 2), b[13] == UInt8(ascii: ":"), let minute = number(14, 2), b[16] == UInt8(ascii: ":"),
            let second = number(17, 2)
        else { return nil }
        guard (1...12).contains(month), day >= 1, day <= daysIn(month: month, year: year), hour < 24, minute < 60, second < 61
        else { return nil }
        var index = 19
        var fraction = 0.0
        if index < b.count, b[index] == UInt8(ascii: ".") {
            index += 1
            var scale = 0.1
            let start = index
            while index < b.count, b[index] >= 48, b[index] <= 57 {
                fraction += Double(b[index] - 48) * scale
                scale /= 10
                index += 1
            }
            guard index > start else { return nil }
        }
        guard index < b.count else { return nil }
        var offsetSeconds: Int64 = 0
        switch b[index] {
        case UInt8(ascii: "Z"), UInt8(ascii: "z"):
            index += 1
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            guard let oh = number(index + 1, 2), index + 3 < b.count, b[index + 3] == UInt8(ascii: ":"),
                let om = number(index + 4, 2), oh < 24, om < 60
            else { return nil }
            offsetSeconds = (oh * 3600 + om * 60) * (b[index] == UInt8(ascii: "+") ? 1 : -1)
            index += 6
        default:
            return nil
        }
        guard index == b.count else { return nil }
        let days = self.days(fromCivil: year, month, day)
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + min(second, 59) - offsetSeconds
        return Date(timeIntervalSince1970: Double(seconds) + fraction)
    }

    /// `value` in decimal, zeros in front up to `width` characters (a year before 1 keeps its
    /// sign after the zeros, as it always was written).
    private static func pad(_ value: Int64, _ width: Int, into out: inout [UInt8]) {
        if value >= 0 && value < 10_000 {
            var divisor: Int64 = 1
            for _ in 1..<max(width, 1) { divisor *= 10 }
            var v = value
            if v >= divisor * 10 {  // wider than `width`
                while divisor * 10 <= v { divisor *= 10 }
            }
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(v / divisor))
                v %= divisor
                divisor /= 10
            }
            return
        }
        let s = String(value)
        if s.utf8.count < width { out.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: width - s.utf8.count)) }
        out.append(contentsOf: s.utf8)
    }

    private static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    // Howard Hinnant's days_from_civil / civil_from_days.
    private static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    private static func civil(fromDays z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp + (mp < 10 ? 3 : -9)
        return (m <= 2 ? y + 1 : y, m, d)
    }
}

/// Milliseconds since 1970, the resolution at which FleetCore compares instants,
/// so that boundaries ("exactly 15 minutes") are exact.
@usableFromInline
func milliseconds(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }

extension Date {
    /// Milliseconds since 1970, rounded as FleetCore's evaluator rounds them, for code that
    /// schedules by the evaluator's instants.
    public var millisecondsSince1970: Int64 { milliseconds(self) }

    public init(millisecondsSince1970 ms: Int64) { self.init(timeIntervalSince1970: Double(ms) / 1000) }
}

@usableFromInline
func date(milliseconds: Int64) -> Date { Date(timeIntervalSince1970: Double(milliseconds) / 1000) }

extension Duration {
    /// Whole milliseconds (rounded toward zero).
    public var milliseconds: Int64 {
        let c = components
        return c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000
    }

    /// Seconds as a floating-point number.
    public var secondsValue: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}
