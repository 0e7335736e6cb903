import FleetCore
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The dashboard's pictures, drawn on the server as inline SVG: no script, no external asset,
/// so the page's Content-Security-Policy stays `default-src 'none'`. Every mode has a pattern
/// as well as a colour (solid, stripes, cross-hatch, dots) and its name in the legend, in wide
/// spans and in each shape's tooltip (`<title>`), so an operator who cannot tell the colours
/// apart reads the same picture.
enum Charts {
    struct Look {
        var color: String
        var fill: String
        var pattern: String
    }

    static func look(_ mode: ConnectivityMode) -> Look {
        switch mode {
        case .connected: Look(color: "#1e8e3e", fill: "#1e8e3e", pattern: "solid")
        case .semiConnected: Look(color: "#d98c00", fill: "url(#ef-semi)", pattern: "stripes")
        case .disconnected: Look(color: "#c5221f", fill: "url(#ef-disconnected)", pattern: "cross-hatch")
        case .unknown: Look(color: "#80868b", fill: "url(#ef-unknown)", pattern: "dots")
        }
    }

    /// The patterns, once per page (the charts refer to them by id).
    static let definitions = """
        <svg width=0 height=0 style='position:absolute' aria-hidden=true><defs>
        <pattern id=ef-semi width=8 height=8 patternUnits=userSpaceOnUse patternTransform='rotate(45)'>\
        <rect width=8 height=8 fill='#d98c00' /><rect width=3 height=8 fill='#fff' opacity=.55 /></pattern>
        <pattern id=ef-disconnected width=8 height=8 patternUnits=userSpaceOnUse>\
        <rect width=8 height=8 fill='#c5221f' /><path d='M0 0L8 8M8 0L0 8' stroke='#fff' stroke-width=1.6 opacity=.7 /></pattern>
        <pattern id=ef-unknown width=6 height=6 patternUnits=userSpaceOnUse>\
        <rect width=6 height=6 fill='#80868b' /><circle cx=3 cy=3 r=1.3 fill='#fff' /></pattern>
        </defs></svg>
        """

    /// A swatch and the name of each mode (and of what is not recorded, where it shows).
    static func legend(unrecorded: Bool = false) -> String {
        var parts = ConnectivityMode.allCases.map { mode in
            let look = look(mode)
            return "<span class=swatch><svg width=22 height=14 role=img aria-label='\(mode.rawValue): \(look.pattern)'>"
                + "<rect width=22 height=14 fill=\"\(look.fill)\" stroke='#555' stroke-width=.5 /></svg> \(mode.rawValue) (\(look.pattern))</span>"
        }
        if unrecorded {
            parts.append("<span class=swatch><svg width=22 height=14><rect width=22 height=14 fill='#f0f1f3' stroke='#555' stroke-width=.5 /></svg> not recorded</span>")
        }
        return "<p class=legend>" + parts.joined(separator: " ") + "</p>"
    }

    static let width = 960.0

    /// A site's modes over the window: one band, a span per mode, a time axis under it.
    static func timeline(_ history: SiteHistory) -> String {
        let from = history.window.from
        let total = max(1, history.window.seconds)
        func x(_ date: Date) -> Double { max(0, min(width, date.timeIntervalSince(from) / total * width)) }
        var svg = "<svg class=chart id=timeline viewBox='0 0 \(Int(width)) 74' role=img aria-label='\(escape(history.site.rawValue)): modes over the window'>"
        svg += "<rect x=0 y=6 width=\(Int(width)) height=40 fill='#f0f1f3'><title>not recorded</title></rect>"
        if let first = history.spans.first, first.from > from {
            let w = x(first.from)
            if w > 90 { svg += "<text x=\(fmt(w / 2)) y=31 text-anchor=middle class=muted>not recorded</text>" }
        }
        for span in history.spans {
            let a = x(span.from)
            let b = x(span.to ?? history.window.to)
            guard b > a else { continue }
            let look = look(span.mode)
            let until = span.to.map { RFC3339.format($0) } ?? "now"
            let length = DurationFormat.human(seconds: (span.to ?? history.window.to).timeIntervalSince(span.from))
            svg += "<rect data-mode='\(span.mode.rawValue)' x=\(fmt(a)) y=6 width=\(fmt(max(0.5, b - a))) height=40 fill=\"\(look.fill)\">"
            svg += "<title>\(span.mode.rawValue) (\(look.pattern)) from \(RFC3339.format(span.from)) to \(until): \(escape(length))</title></rect>"
            // A label where it fits, on a white plate so that it reads over any pattern.
            let label = "\(span.mode.rawValue) \(length)"
            if b - a > Double(label.count) * 7 + 12 {
                let w = Double(label.count) * 6.6 + 8
                svg += "<rect x=\(fmt((a + b) / 2 - w / 2)) y=17 width=\(fmt(w)) height=18 rx=3 fill='#fff' opacity=.9 />"
                svg += "<text x=\(fmt((a + b) / 2)) y=30 text-anchor=middle>\(escape(label))</text>"
            }
        }
        svg += axis(from: from, to: history.window.to, y: 46)
        return svg + "</svg>"
    }

    /// How many sites were in each mode, slice by slice: stacked bars, connected at the bottom.
    static func fleetChart(_ history: FleetHistory) -> String {
        let height = 200.0
        let top = 10.0
        let left = 44.0
        let plot = width - left
        let maximum = max(1, history.series.map { $0.sites.values.reduce(0, +) }.max() ?? 1)
        let slice = plot / Double(max(1, history.series.count))
        var svg = "<svg class=chart id=fleet-chart viewBox='0 0 \(Int(width)) \(Int(height + top + 30))' role=img "
        svg += "aria-label='sites in each mode over the window'>"
        for fraction in [0.0, 0.5, 1.0] {
            let y = top + height * (1 - fraction)
            svg += "<line x1=\(fmt(left)) x2=\(Int(width)) y1=\(fmt(y)) y2=\(fmt(y)) stroke='#d5d8de' />"
            svg += "<text x=\(fmt(left - 4)) y=\(fmt(y + 4)) text-anchor=end class=muted>\(Int((maximum * fraction).rounded()))</text>"
        }
        for (index, sample) in history.series.enumerated() {
            var y = top + height
            let x = left + Double(index) * slice
            for mode in ConnectivityMode.allCases {
                let count = sample.sites[mode.rawValue] ?? 0
                guard count > 0 else { continue }
                let h = count / maximum * height
                y -= h
                svg += "<rect data-mode='\(mode.rawValue)' x=\(fmt(x)) y=\(fmt(y)) width=\(fmt(max(0.5, slice - 1))) height=\(fmt(h)) fill=\"\(look(mode).fill)\">"
                svg += "<title>from \(RFC3339.format(sample.from)): \(fmt(count)) \(mode.rawValue) (\(look(mode).pattern))</title></rect>"
            }
        }
        svg += "<g transform='translate(\(fmt(left)) 0)'>" + axis(from: history.window.from, to: history.window.to, y: top + height, width: plot) + "</g>"
        return svg + "</svg>"
    }

    /// Five dates under a band `width` wide starting at x 0.
    static func axis(from: Date, to: Date, y: Double, width: Double = Charts.width) -> String {
        var svg = "<line x1=0 x2=\(fmt(width)) y1=\(fmt(y)) y2=\(fmt(y)) stroke='#555' />"
        for step in 0...4 {
            let x = width * Double(step) / 4
            let date = from.addingTimeInterval(to.timeIntervalSince(from) * Double(step) / 4)
            let anchor = step == 0 ? "start" : step == 4 ? "end" : "middle"
            let text = String(RFC3339.format(date).prefix(16)).replacingOccurrences(of: "T", with: " ")
            svg += "<line x1=\(fmt(x)) x2=\(fmt(x)) y1=\(fmt(y)) y2=\(fmt(y + 5)) stroke='#555' />"
            svg += "<text x=\(fmt(x)) y=\(fmt(y + 18)) text-anchor=\(anchor) class=muted>\(text)</text>"
        }
        return svg
    }

    static func fmt(_ value: Double) -> String {
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
    }
}

/// The fleet's history for the dashboard, worked out at most once a minute (the page refreshes
/// every 10 s; over 100,000 sites the work takes about a second).
final class FleetHistoryCache: Sendable {
    private let cached = Mutex<(at: ContinuousClock.Instant, value: FleetHistory)?>(nil)
    let lifetime: Duration

    init(lifetime: Duration = .seconds(60)) {
        self.lifetime = lifetime
    }

    func value(_ compute: () throws -> FleetHistory) rethrows -> FleetHistory {
        if let hit = cached.withLock({ $0 }), ContinuousClock.now - hit.at < lifetime { return hit.value }
        let value = try compute()
        cached.withLock { $0 = (ContinuousClock.now, value) }
        return value
    }
}
