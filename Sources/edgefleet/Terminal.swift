import FleetCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What standard output is: colours only on a terminal without `NO_COLOR`, and tables
/// cut to the terminal's width (piped output is never cut).
enum Terminal {
    static let isTerminal = isatty(1) == 1

    static let colors: Bool = {
        let environment = ProcessInfo.processInfo.environment
        if let value = environment["NO_COLOR"], !value.isEmpty { return false }
        if environment["TERM"] == "dumb" { return false }
        return isTerminal
    }()

    static let width: Int? = {
        guard isTerminal else { return nil }
        if let columns = ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init), columns > 20 { return columns }
        var size = winsize()
        guard ioctl(1, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 20 else { return nil }
        return Int(size.ws_col)
    }()

    static func paint(_ text: String, _ code: String) -> String { colors ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }

    static func mode(_ mode: ConnectivityMode) -> String {
        switch mode {
        case .connected: paint(mode.rawValue, "32")
        case .semiConnected: paint(mode.rawValue, "33")
        case .disconnected: paint(mode.rawValue, "1;31")
        case .unknown: paint(mode.rawValue, "2")
        }
    }

    static func liveness(_ liveness: Liveness) -> String {
        switch liveness {
        case .online: liveness.rawValue
        case .stale: paint(liveness.rawValue, "33")
        case .offline: paint(liveness.rawValue, "31")
        }
    }

    static func state(_ state: OperationState) -> String {
        switch state {
        case .failed, .blocked: paint(state.rawValue, "31")
        case .dispatching: paint(state.rawValue, "33")
        case .succeeded: paint(state.rawValue, "32")
        default: state.rawValue
        }
    }

    static func bold(_ text: String) -> String { paint(text, "1") }
}

/// A table of text columns, with the widths of what is shown (escape codes do not count).
/// When it is wider than the terminal, the flexible column is cut first, with an ellipsis.
struct Table {
    var headers: [String]
    var rows: [[String]] = []
    /// The column that gives way when the table is too wide (the last by default).
    var flexible: Int?

    init(_ headers: [String], flexible: Int? = nil) {
        self.headers = headers
        self.flexible = flexible
    }

    /// Cells are shown as given: pass text from sites or the queue through `Out.clean` first
    /// (the CLI's own colours are escape codes too).
    mutating func add(_ row: [String]) { rows.append(row) }

    static func visibleWidth(_ text: String) -> Int {
        var width = 0
        var escape = false
        for scalar in text.unicodeScalars {
            if escape {
                if scalar == "m" { escape = false }
            } else if scalar == "\u{1B}" {
                escape = true
            } else {
                width += 1
            }
        }
        return width
    }

    static func cut(_ text: String, to width: Int) -> String {
        guard visibleWidth(text) > width else { return text }
        // Cut plain text only (a cut inside an escape sequence would break the terminal).
        let plain = text.replacingOccurrences(of: "\u{1B}\\[[0-9;]*m", with: "", options: .regularExpression)
        return String(plain.prefix(max(0, width - 1))) + "…"
    }

    func render() -> String {
        var widths = headers.map(\.count)
        for row in rows {
            for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], Self.visibleWidth(cell)) }
        }
        let flexible = self.flexible ?? headers.count - 1
        if let terminal = Terminal.width {
            var total = widths.reduce(0, +) + 2 * (widths.count - 1)
            // The flexible column gives way first (down to 8), then the widest of the others (down to 6).
            let cut = min(total - terminal, widths[flexible] - 8)
            if cut > 0 {
                widths[flexible] -= cut
                total -= cut
            }
            while total > terminal, let widest = widths.indices.max(by: { widths[$0] < widths[$1] }), widths[widest] > 6 {
                widths[widest] -= 1
                total -= 1
            }
        }
        func line(_ cells: [String], bold: Bool) -> String {
            var parts: [String] = []
            for (i, width) in widths.enumerated() {
                var cell = i < cells.count ? Self.cut(cells[i], to: width) : ""
                if bold { cell = Terminal.bold(cell) }
                let pad = i == widths.count - 1 ? 0 : width - Self.visibleWidth(cell)
                parts.append(cell + String(repeating: " ", count: max(0, pad)))
            }
            return parts.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }
        return ([line(headers, bold: true)] + rows.map { line($0, bold: false) }).joined(separator: "\n")
    }
}

/// Printing helpers shared by the commands.
enum Out {
    /// Text from sites, operators or the queue, made safe for a terminal: control characters
    /// (C0, DEL, C1: escape sequences that could rewrite the screen or the clipboard) become
    /// `?`, line breaks become spaces.
    static func clean(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0x0A, 0x0D, 0x09: out.append(" ")
            case 0..<0x20, 0x7F...0x9F: out.append("?")
            default: out.append(scalar)
            }
        }
        return String(out)
    }

    static func json<T: Encodable>(_ value: T) throws {
        let encoder = FleetJSON.encoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }

    static func time(_ date: Date?) -> String {
        date.map(RFC3339.format) ?? "—"
    }

    /// `12d 4h left`, `passed 3h ago`, `—`.
    static func left(_ view: SiteView) -> String {
        guard let remaining = view.remainingS ?? view.deadline.map({ $0.timeIntervalSinceNow }) else { return "—" }
        if remaining <= 0 { return "passed \(DurationFormat.human(seconds: -remaining)) ago" }
        return DurationFormat.human(seconds: remaining)
    }

    static func ago(_ date: Date?) -> String {
        guard let date else { return "never" }
        return "\(DurationFormat.human(seconds: max(0, -date.timeIntervalSinceNow))) ago"
    }
}
