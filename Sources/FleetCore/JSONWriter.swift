#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// A payload that writes its own JSON: the same bytes as its `Encodable` conformance through
/// `CompactJSON` (and Foundation's encoder set up as the contract says), without the generic
/// `Codable` machinery. `CompactJSON.encode` uses it when a value has it.
///
/// Why: in a reconnect storm every operation writes its document twice (claim and outcome),
/// two events (stored and published) and about two site views; through `Codable` that was an
/// eighth of the aggregator's CPU, most of it in the protocol's generic containers rather than
/// in writing bytes. Only the payloads on that path have it.
///
/// The rule for a writer: the keys in the order `CompactJSON` sorts them (by UTF-8 bytes:
/// `deadline` before `deadlineReason`, upper case before lower), an optional left out when nil
/// (as `encodeIfPresent` does). `JSONWriterTests` compares every writer with Foundation's
/// encoder on a value with every optional set, and checks by reflection that the value it uses
/// has every optional set: a property added to a type without its writer fails there.
public protocol JSONWritable: Encodable {
    func write(to json: inout JSONWriter) throws
}

/// Appends compact JSON to a byte buffer. Commas are placed by looking at the last byte
/// written: a key or an element after `{` or `[` needs none.
public struct JSONWriter {
    public var bytes: [UInt8] = []
    #if DEBUG
        /// The last key of each open object (debug builds check their order).
        private var keys: [[UInt8]] = []
    #endif

    public init(capacity: Int = 512) {
        bytes.reserveCapacity(capacity)
    }

    @inline(__always)
    private mutating func separate() {
        if let last = bytes.last, last != UInt8(ascii: "{"), last != UInt8(ascii: "["), last != UInt8(ascii: ":") {
            bytes.append(UInt8(ascii: ","))
        }
    }

    public mutating func beginObject() {
        separate()
        bytes.append(UInt8(ascii: "{"))
        #if DEBUG
            keys.append([])
        #endif
    }

    public mutating func endObject() {
        bytes.append(UInt8(ascii: "}"))
        #if DEBUG
            keys.removeLast()
        #endif
    }

    public mutating func beginArray() {
        separate()
        bytes.append(UInt8(ascii: "["))
    }

    public mutating func endArray() { bytes.append(UInt8(ascii: "]")) }

    /// A key of the open object: plain ASCII needing no escapes, given in sorted order.
    public mutating func key(_ name: StaticString) {
        separate()
        bytes.append(UInt8(ascii: "\""))
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
        #if DEBUG
            let key = name.withUTF8Buffer { Array($0) }
            if let previous = keys.last, !previous.isEmpty {
                precondition(previous.lexicographicallyPrecedes(key), "JSONWriter: key \(name) written after \(String(decoding: previous, as: UTF8.self))")
            }
            keys[keys.count - 1] = key
        #endif
    }

    // MARK: Values

    public mutating func string(_ value: String) {
        separate()
        JSONValueWriter.appendString(value, into: &bytes)
    }

    public mutating func int<I: BinaryInteger>(_ value: I) {
        separate()
        JSONValueWriter.appendDecimal(value, into: &bytes)
    }

    public mutating func bool(_ value: Bool) {
        separate()
        bytes.append(contentsOf: (value ? "true" : "false").utf8)
    }

    /// An explicit `null` (a field the contract writes even when it has no value).
    public mutating func null() {
        separate()
        bytes.append(contentsOf: "null".utf8)
    }

    /// As Foundation writes a double (an integral one without ".0"); not a number is refused.
    public mutating func double(_ value: Double) throws {
        separate()
        guard case .number(let text) = try JSONNode.double(value, parent: nil, key: nil) else { return }
        bytes.append(contentsOf: text.utf8)
    }

    /// RFC 3339 UTC with milliseconds, rounded as `CompactJSON` rounds.
    public mutating func date(_ value: Date) {
        separate()
        bytes.append(UInt8(ascii: "\""))
        RFC3339.append(milliseconds: Int64((value.timeIntervalSince1970 * 1000).rounded()), into: &bytes)
        bytes.append(UInt8(ascii: "\""))
    }

    /// An object of strings, its keys sorted by their UTF-8 bytes.
    public mutating func object(_ dictionary: [String: String]) {
        object(dictionary) { json, value in json.string(value) }
    }

    /// An object, its keys sorted by their UTF-8 bytes (as Foundation sorts a dictionary's).
    private mutating func object<Value>(_ dictionary: [String: Value], _ write: (inout JSONWriter, Value) -> Void) {
        beginObject()
        for key in dictionary.keys.sorted(by: { JSONValueWriter.compareUTF8($0, $1) < 0 }) {
            separate()
            JSONValueWriter.appendString(key, into: &bytes)
            bytes.append(UInt8(ascii: ":"))
            write(&self, dictionary[key]!)
        }
        endObject()
    }

    // MARK: Fields (an optional left out when nil)

    public mutating func field(_ name: StaticString, _ value: String?) {
        guard let value else { return }
        key(name)
        string(value)
    }

    public mutating func field<R: RawRepresentable<String>>(_ name: StaticString, _ value: R?) {
        guard let value else { return }
        key(name)
        string(value.rawValue)
    }

    public mutating func field(_ name: StaticString, _ value: SiteID?) {
        guard let value else { return }
        key(name)
        string(value.rawValue)
    }

    public mutating func field<I: BinaryInteger>(_ name: StaticString, _ value: I?) {
        guard let value else { return }
        key(name)
        int(value)
    }

    public mutating func field(_ name: StaticString, _ value: Bool?) {
        guard let value else { return }
        key(name)
        bool(value)
    }

    public mutating func field(_ name: StaticString, _ value: Double?) throws {
        guard let value else { return }
        key(name)
        try double(value)
    }

    public mutating func field(_ name: StaticString, _ value: Date?) {
        guard let value else { return }
        key(name)
        date(value)
    }

    public mutating func field(_ name: StaticString, _ value: [String: String]?) {
        guard let value else { return }
        key(name)
        object(value)
    }

    public mutating func field(_ name: StaticString, _ value: (some JSONWritable)?) throws {
        guard let value else { return }
        key(name)
        try value.write(to: &self)
    }

    /// A double, written `null` when nil (as `encode`, not `encodeIfPresent`, writes it).
    public mutating func fieldOrNull(_ name: StaticString, _ value: Double?) throws {
        key(name)
        if let value { try double(value) } else { null() }
    }

    public mutating func field(_ name: StaticString, _ value: [String: Bool]) {
        key(name)
        object(value) { json, value in json.bool(value) }
    }

    public mutating func field<W: JSONWritable>(_ name: StaticString, _ values: [W]) throws {
        key(name)
        beginArray()
        for value in values { try value.write(to: &self) }
        endArray()
    }
}

// MARK: - The payloads on the aggregator's hot path

extension QueueCounts: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("blocked", blocked)
        json.field("dispatching", dispatching)
        json.field("failed", failed)
        json.field("queued", queued)
        json.endObject()
    }
}

extension CheckCounts: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("fail", fail)
        json.field("pass", pass)
        json.field("unknown", unknown)
        json.field("warn", warn)
        json.endObject()
    }
}

extension SiteView: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("alert", alert)
        try json.field("checks", checks)
        json.field("deadline", deadline)
        json.field("deadlineReason", deadlineReason)
        json.field("labels", labels)
        json.field("lastAzureContactAt", lastAzureContactAt)
        json.field("lastHeartbeatAt", lastHeartbeatAt)
        json.field("liveness", liveness)
        json.field("mode", mode)
        json.field("modeSince", modeSince)
        json.field("projected", projected)
        try json.field("queue", queue)
        try json.field("remainingS", remainingS)
        json.field("schema", schema.value)
        json.field("site", site)
        json.endObject()
    }
}

extension FleetEvent: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("at", at)
        json.field("contactAt", contactAt)
        json.field("deadline", deadline)
        json.field("epoch", epoch)
        json.field("from", from)
        json.field("id", id)
        json.field("kind", kind)
        json.field("level", level)
        json.field("note", note)
        json.field("operationID", operationID)
        try json.field("remainingS", remainingS)
        json.field("rollout", rollout)
        json.field("schema", schema.value)
        json.field("site", site)
        json.field("to", to)
        json.field("type", type)
        json.endObject()
    }
}

extension OperationHistoryEntry: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("at", at)
        json.field("from", from)
        json.field("note", note)
        json.field("to", to)
        json.endObject()
    }
}

extension DeferredOperation: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("attempts", attempts)
        json.field("createdAt", createdAt)
        json.field("createdBy", createdBy)
        json.field("expiresAt", expiresAt)
        try json.field("history", history)
        json.field("id", id)
        json.field("idempotencyKey", idempotencyKey)
        json.field("kind", kind)
        json.field("lastError", lastError)
        json.field("maxAttempts", maxAttempts)
        json.field("nextAttemptAt", nextAttemptAt)
        json.field("notBefore", notBefore)
        json.field("params", params)
        json.field("released", released)
        json.field("releasedAt", releasedAt)
        json.field("sequence", sequence)
        json.field("site", site)
        json.field("state", state)
        json.endObject()
    }
}

extension StoredEventBody: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("contactMs", contactMs)
        json.field("deadlineMs", deadlineMs)
        json.field("epoch", epoch)
        json.field("from", from)
        json.field("kind", kind)
        json.field("level", level)
        json.field("note", note)
        json.field("operationID", operationID)
        try json.field("remainingS", remainingS)
        json.field("rollout", rollout)
        json.field("to", to)
        json.endObject()
    }
}

extension AgentInfo: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("host", host)
        json.field("version", version)
        json.endObject()
    }
}

extension ClusterInfo: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("customLocation", customLocation)
        json.field("kubernetesVersion", kubernetesVersion)
        json.field("name", name)
        json.field("resourceGroup", resourceGroup)
        json.field("subscription", subscription)
        json.endObject()
    }
}

extension CheckResult: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("durationMs", durationMs)
        json.field("name", name)
        json.field("observedAt", observedAt)
        json.field("output", output)
        json.field("state", state)
        json.endObject()
    }
}

// MARK: - The payloads agents (and the simulated fleet) publish

/// A heartbeat every interval from every site: through `Codable` its encoding was the largest
/// part of the simulated fleet's own CPU.
extension Heartbeat: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.key("azure")
        try azure.write(to: &json)
        try json.field("certificates", certificates)
        json.field("instance", instance)
        json.field("schema", schema.value)
        json.field("sentAt", sentAt)
        json.field("seq", seq)
        json.field("session", session)
        json.field("site", site)
        json.endObject()
    }
}

extension AzureReport: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        try json.fieldOrNull("lastContactAgeS", lastContactAgeS)
        json.field("probe", probe)
        json.field("reachable", reachable)
        json.endObject()
    }
}

extension CertificateReport: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("earliestNotAfter", earliestNotAfter)
        json.field("error", error)
        json.field("source", source)
        json.endObject()
    }
}

extension SiteStatus: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        json.field("at", at)
        json.field("capabilities", capabilities)
        try json.field("checks", checks)
        try json.field("cluster", cluster)
        json.field("instance", instance)
        json.field("labels", labels)
        json.field("schema", schema.value)
        json.field("session", session)
        json.field("site", site)
        json.field("spoolDropped", spoolDropped)
        json.endObject()
    }
}

extension Presence: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        try json.field("agent", agent)
        json.field("at", at)
        json.field("epoch", epoch)
        try json.field("heartbeatIntervalS", heartbeatIntervalS)
        json.field("instance", instance)
        json.field("reason", reason)
        json.field("replica", replica)
        json.field("role", role)
        json.field("schema", schema.value)
        json.field("session", session)
        json.field("site", site)
        json.field("state", state)
        json.endObject()
    }
}
