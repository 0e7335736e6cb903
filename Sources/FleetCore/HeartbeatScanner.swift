#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A fast path for the one message that arrives all the time: reads a heartbeat in the shape
/// agents send it (one flat pass over the bytes, no intermediate JSON tree, no generic decoding)
/// and gives up, returning nil, on anything else: an escape in a string, an unknown key, a
/// duplicate, a type it does not expect, a schema other than `edgefleet.heartbeat/1`. A caller
/// then decodes with `JSONDecoder`, which stays the definition of what a heartbeat is (a test
/// checks the two agree on every payload the fast path accepts). Profiling the aggregator under
/// a steady stream put `JSONDecoder` at 39% of its CPU.
public enum HeartbeatScanner {
    public static func scan(_ bytes: [UInt8]) -> Heartbeat? {
        bytes.withUnsafeBufferPointer { buffer in
            var scanner = CanonicalScanner(bytes: buffer)
            return scanner.heartbeat()
        }
    }
}

/// The same fast path for a site's status (`edgefleet.status/1`): agents publish one whenever a
/// check changes, and every site of a fleet whose link comes back at once publishes one (the
/// Arc agents' check turns to pass). Through `JSONDecoder` the 5,000 statuses of a reconnect
/// storm were 4% of the aggregator's CPU. The same rules: nil on anything but the canonical
/// shape (an escape in a string, an unknown or repeated key, a number with a fraction where an
/// integer goes, ...), and `JSONDecoder` decides those.
public enum StatusScanner {
    public static func scan(_ bytes: [UInt8]) -> SiteStatus? {
        bytes.withUnsafeBufferPointer { buffer in
            var scanner = CanonicalScanner(bytes: buffer)
            return scanner.status()
        }
    }
}

/// One pass over the bytes of a payload in its canonical shape (see `HeartbeatScanner`).
private struct CanonicalScanner {
    static let heartbeatKeys: [StaticString] = ["schema", "site", "session", "seq", "instance", "sentAt", "azure", "certificates"]
    static let azureKeys: [StaticString] = ["reachable", "lastContactAgeS", "probe"]
    static let certificateKeys: [StaticString] = ["earliestNotAfter", "source", "error"]

    let bytes: UnsafeBufferPointer<UInt8>
    var at = 0

    mutating func skipSpace() {
        while at < bytes.count, bytes[at] == 0x20 || bytes[at] == 0x0A || bytes[at] == 0x0D || bytes[at] == 0x09 { at += 1 }
    }

    mutating func take(_ byte: UInt8) -> Bool {
        skipSpace()
        guard at < bytes.count, bytes[at] == byte else { return false }
        at += 1
        return true
    }

    /// A string without escapes or control characters.
    mutating func string() -> String? {
        guard take(0x22) else { return nil }
        let start = at
        while at < bytes.count {
            let b = bytes[at]
            if b == 0x22 {
                // Invalid UTF-8 is the full decoder's to refuse (decoding would repair it).
                guard let text = String(validating: UnsafeBufferPointer(rebasing: bytes[start..<at]), as: UTF8.self) else { return nil }
                at += 1
                return text
            }
            if b == 0x5C || b < 0x20 { return nil }
            at += 1
        }
        return nil
    }

    /// A string or `null` (nil when neither: the outer nil says "give up").
    mutating func optionalString() -> String?? {
        if null() { return .some(nil) }
        guard let text = string() else { return nil }
        return .some(text)
    }

    mutating func null() -> Bool {
        skipSpace()
        guard at + 4 <= bytes.count, bytes[at] == 0x6E, bytes[at + 1] == 0x75, bytes[at + 2] == 0x6C, bytes[at + 3] == 0x6C else { return false }
        at += 4
        return true
    }

    mutating func bool() -> Bool? {
        skipSpace()
        if at + 4 <= bytes.count, bytes[at] == 0x74, bytes[at + 1] == 0x72, bytes[at + 2] == 0x75, bytes[at + 3] == 0x65 {
            at += 4
            return true
        }
        if at + 5 <= bytes.count, bytes[at] == 0x66, bytes[at + 1] == 0x61, bytes[at + 2] == 0x6C, bytes[at + 3] == 0x73, bytes[at + 4] == 0x65 {
            at += 5
            return false
        }
        return nil
    }

    /// A non-negative integer without sign, fraction or exponent, within UInt64.
    mutating func unsigned() -> UInt64? {
        skipSpace()
        var value: UInt64 = 0
        let start = at
        while at < bytes.count, bytes[at] >= 0x30, bytes[at] <= 0x39 {
            let (times, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times.addingReportingOverflow(UInt64(bytes[at] - 0x30))
            if o1 || o2 { return nil }
            value = sum
            at += 1
        }
        guard at > start, at - start == 1 || bytes[start] != 0x30 else { return nil }  // no leading zeros
        if at < bytes.count, bytes[at] == 0x2E || bytes[at] == 0x65 || bytes[at] == 0x45 { return nil }
        return value
    }

    /// A JSON number as a Double: the grammar checked here (`-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`),
    /// the value by Swift's own parser on its text.
    mutating func double() -> Double? {
        skipSpace()
        let start = at
        func digits() -> Int {
            let from = at
            while at < bytes.count, bytes[at] >= 0x30, bytes[at] <= 0x39 { at += 1 }
            return at - from
        }
        if at < bytes.count, bytes[at] == 0x2D { at += 1 }
        let integerStart = at
        let integer = digits()
        guard integer > 0, integer == 1 || bytes[integerStart] != 0x30 else { return nil }
        if at < bytes.count, bytes[at] == 0x2E {
            at += 1
            guard digits() > 0 else { return nil }
        }
        if at < bytes.count, bytes[at] == 0x65 || bytes[at] == 0x45 {
            at += 1
            if at < bytes.count, bytes[at] == 0x2B || bytes[at] == 0x2D { at += 1 }
            guard digits() > 0 else { return nil }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<at]), as: UTF8.self)
        guard let value = Double(text), value.isFinite else { return nil }
        return value
    }

    /// The bytes of a string without escapes or control characters (not validated as UTF-8).
    mutating func rawString() -> Range<Int>? {
        guard take(0x22) else { return nil }
        let start = at
        while at < bytes.count {
            let b = bytes[at]
            if b == 0x22 {
                at += 1
                return start..<(at - 1)
            }
            if b == 0x5C || b < 0x20 { return nil }
            at += 1
        }
        return nil
    }

    func equals(_ range: Range<Int>, _ word: StaticString) -> Bool {
        guard range.count == word.utf8CodeUnitCount else { return false }
        let w = word.utf8Start
        for i in 0..<range.count where bytes[range.lowerBound + i] != w[i] { return false }
        return true
    }

    /// `{ "key": value, ... }` with each key at most once; keys are matched against `keys`
    /// as bytes (no strings made), and `field` reads the value of the key at that index. An
    /// unknown key or a repeated one gives up.
    mutating func object(_ keys: [StaticString], _ field: (inout CanonicalScanner, Int) -> Bool) -> Bool {
        guard take(0x7B) else { return false }
        var seen: UInt32 = 0
        if take(0x7D) { return true }
        repeat {
            guard let key = rawString(), let index = keys.firstIndex(where: { equals(key, $0) }), seen & (1 << index) == 0, take(0x3A)
            else { return false }
            seen |= 1 << index
            guard field(&self, index) else { return false }
        } while take(0x2C)
        return take(0x7D)
    }

    mutating func date() -> Date? {
        guard let range = rawString() else { return nil }
        return RFC3339.parse(bytes: UnsafeBufferPointer(rebasing: bytes[range]))
    }

    /// A site id: its rules (a-z, 0-9, '-', 1 to 63, not starting with '-') checked on the
    /// bytes, the string made once.
    mutating func siteID() -> SiteID? {
        guard let range = rawString(), (1...63).contains(range.count) else { return nil }
        for i in range {
            let b = bytes[i]
            let alphanumeric = (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39)
            guard alphanumeric || (b == 0x2D && i != range.lowerBound) else { return nil }
        }
        return try? SiteID(String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self))
    }

    mutating func heartbeat() -> Heartbeat? {
        var site: SiteID?
        var session: UInt64?
        var seq: UInt64?
        var instance: String??
        var sentAt: Date?
        var azure: AzureReport?
        var certificates: CertificateReport??
        var schema = false
        let ok = object(Self.heartbeatKeys) { s, key in
            switch key {
            case 0:
                guard let range = s.rawString() else { return false }
                schema = s.equals(range, "edgefleet.heartbeat/1")
                return schema  // another schema: the full decoder says which
            case 1: site = s.siteID(); return site != nil
            case 2: session = s.unsigned(); return session != nil
            case 3: seq = s.unsigned(); return seq != nil
            case 4:
                instance = s.optionalString()
                return instance != nil
            case 5: sentAt = s.date(); return sentAt != nil
            case 6: azure = s.azure(); return azure != nil
            case 7:
                if s.null() { certificates = .some(nil); return true }
                guard let report = s.certificates() else { return false }
                certificates = .some(report)
                return true
            default: return false
            }
        }
        skipSpace()
        guard ok, at == bytes.count, schema, let site, let session, let seq, let sentAt, let azure else { return nil }
        return Heartbeat(site: site, session: session, seq: seq, sentAt: sentAt, azure: azure, certificates: certificates ?? nil, instance: instance ?? nil)
    }

    mutating func azure() -> AzureReport? {
        var reachable: Bool?
        var age: Double??
        var probe: String?
        let ok = object(Self.azureKeys) { s, key in
            switch key {
            case 0: reachable = s.bool(); return reachable != nil
            case 1:
                if s.null() { age = .some(nil); return true }
                guard let value = s.double() else { return false }
                age = .some(value)
                return true
            case 2: probe = s.string(); return probe != nil
            default: return false
            }
        }
        // A missing lastContactAgeS decodes as nil in the full decoder as well.
        guard ok, let reachable, let probe else { return nil }
        return AzureReport(reachable: reachable, lastContactAgeS: age ?? nil, probe: probe)
    }

    mutating func certificates() -> CertificateReport? {
        var notAfter: Date?
        var source: String?
        var error: String?
        let ok = object(Self.certificateKeys) { s, key in
            switch key {
            case 0:
                if s.null() { return true }
                notAfter = s.date()
                return notAfter != nil
            case 1:
                guard let value = s.optionalString() else { return false }
                source = value
                return true
            case 2:
                guard let value = s.optionalString() else { return false }
                error = value
                return true
            default: return false
            }
        }
        guard ok else { return nil }
        return CertificateReport(earliestNotAfter: notAfter, source: source, error: error)
    }

    // MARK: - A site's status

    static let statusKeys: [StaticString] = ["schema", "site", "session", "instance", "at", "cluster", "checks", "capabilities", "spoolDropped", "labels"]
    static let clusterKeys: [StaticString] = ["name", "resourceGroup", "subscription", "customLocation", "kubernetesVersion"]
    static let checkKeys: [StaticString] = ["name", "state", "observedAt", "durationMs", "output"]

    /// An integer without fraction or exponent (a leading minus allowed), within Int.
    mutating func integer() -> Int? {
        skipSpace()
        let negative = at < bytes.count && bytes[at] == 0x2D
        if negative {
            at += 1
            guard at < bytes.count, bytes[at] >= 0x30, bytes[at] <= 0x39 else { return nil }  // no space after the sign
        }
        guard let magnitude = unsigned(), magnitude <= UInt64(Int.max) else { return nil }
        return negative ? -Int(magnitude) : Int(magnitude)
    }

    /// `[ value, ... ]`, each element read by `element`.
    mutating func array(_ element: (inout CanonicalScanner) -> Bool) -> Bool {
        guard take(0x5B) else { return false }
        if take(0x5D) { return true }
        repeat {
            guard element(&self) else { return false }
        } while take(0x2C)
        return take(0x5D)
    }

    /// `{ "key": value, ... }` with any keys (plain strings, each at most once), each value read by `value`.
    mutating func dictionary<Value>(_ value: (inout CanonicalScanner) -> Value?) -> [String: Value]? {
        guard take(0x7B) else { return nil }
        var result: [String: Value] = [:]
        if take(0x7D) { return result }
        repeat {
            guard let key = string(), take(0x3A), let item = value(&self), result.updateValue(item, forKey: key) == nil else { return nil }
        } while take(0x2C)
        return take(0x7D) ? result : nil
    }

    mutating func status() -> SiteStatus? {
        var site: SiteID?
        var session: UInt64?
        var instance: String??
        var stamped: Date?
        var cluster: ClusterInfo??
        var checks: [CheckResult]?
        var capabilities: [String: Bool]?
        var spoolDropped: Int??
        var labels: [String: String]??
        var schema = false
        let ok = object(Self.statusKeys) { s, key in
            switch key {
            case 0:
                guard let range = s.rawString() else { return false }
                schema = s.equals(range, "edgefleet.status/1")
                return schema
            case 1: site = s.siteID(); return site != nil
            case 2: session = s.unsigned(); return session != nil
            case 3: instance = s.optionalString(); return instance != nil
            case 4: stamped = s.date(); return stamped != nil
            case 5:
                if s.null() { cluster = .some(nil); return true }
                guard let info = s.cluster() else { return false }
                cluster = .some(info)
                return true
            case 6:
                var list: [CheckResult] = []
                guard s.array({ s in
                    guard let check = s.check() else { return false }
                    list.append(check)
                    return true
                }) else { return false }
                checks = list
                return true
            case 7: capabilities = s.dictionary { $0.bool() }; return capabilities != nil
            case 8:
                if s.null() { spoolDropped = .some(nil); return true }
                guard let value = s.integer() else { return false }
                spoolDropped = .some(value)
                return true
            case 9:
                if s.null() { labels = .some(nil); return true }
                guard let value = s.dictionary({ $0.string() }) else { return false }
                labels = .some(value)
                return true
            default: return false
            }
        }
        skipSpace()
        guard ok, at == bytes.count, schema, let site, let session, let stamped, let checks, let capabilities else { return nil }
        return SiteStatus(
            site: site, session: session, at: stamped, cluster: cluster ?? nil, checks: checks, capabilities: capabilities,
            spoolDropped: spoolDropped ?? nil, instance: instance ?? nil, labels: labels ?? nil)
    }

    mutating func cluster() -> ClusterInfo? {
        var values: [String?] = Array(repeating: nil, count: Self.clusterKeys.count)
        let ok = object(Self.clusterKeys) { s, key in
            guard let value = s.optionalString() else { return false }
            values[key] = value
            return true
        }
        guard ok else { return nil }
        return ClusterInfo(name: values[0], resourceGroup: values[1], subscription: values[2], customLocation: values[3], kubernetesVersion: values[4])
    }

    mutating func check() -> CheckResult? {
        var name: String?
        var state: CheckState?
        var observedAt: Date?
        var durationMs: Int?
        var output: String?
        let ok = object(Self.checkKeys) { s, key in
            switch key {
            case 0: name = s.string(); return name != nil
            case 1: state = s.string().flatMap(CheckState.init(rawValue:)); return state != nil
            case 2: observedAt = s.date(); return observedAt != nil
            case 3: durationMs = s.integer(); return durationMs != nil
            case 4: output = s.string(); return output != nil
            default: return false
            }
        }
        guard ok, let name, let state, let observedAt, let durationMs, let output else { return nil }
        return CheckResult(name: name, state: state, observedAt: observedAt, durationMs: durationMs, output: output)
    }
}
