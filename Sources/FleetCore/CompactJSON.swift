#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// A JSON encoder for the contract's conventions (keys sorted by their UTF-8 bytes, slashes not
/// escaped, dates as RFC 3339 UTC milliseconds) whose output is byte for byte what Foundation's
/// `JSONEncoder` configured that way writes (`CompactJSONTests` compares them on every payload
/// type and on the edge cases: control characters, doubles, nested and keyed containers).
///
/// Why not Foundation's: every view, event, operation document and site record the aggregator
/// publishes or stores goes through here, about ten per operation in a reconnect storm, and
/// Foundation's encoder was a fifth of the aggregator's CPU there. Its objects are dictionaries
/// (a hash per key, sorted again at writing), and its custom date strategy builds a nested
/// encoder and a container for each date. Here an object is an array of pairs, sorted once
/// when written, and a date is written straight from its milliseconds.
public enum CompactJSON {
    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        if let writable = value as? any JSONWritable {  // the hot path's payloads write themselves
            var json = JSONWriter()
            try writable.write(to: &json)
            return json.bytes
        }
        return try encodeCodable(value)
    }

    /// Through the value's `Encodable` conformance, even when it has a `JSONWritable` writer
    /// (the benchmark compares the two).
    public static func encodeCodable<T: Encodable>(_ value: T) throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(512)
        try JSONValueWriter.write(try node(of: value, parent: nil, key: nil), into: &out)
        return out
    }

    /// The node for `value`, found at `key` of what `parent` encodes (the coding path, for
    /// errors and for types that ask, is walked up from there only when needed).
    static func node<T: Encodable>(of value: T, parent: CompactEncoder?, key: (any CodingKey)?) throws -> JSONNode {
        if let primitive = try JSONNode.primitive(value, parent: parent, key: key) { return primitive }
        let encoder = CompactEncoder(parent: parent, key: key)
        try value.encode(to: encoder)
        return encoder.result
    }
}

/// A coding key for a position in an array; its text is made only if someone asks for it.
struct IndexKey: CodingKey {
    let index: Int
    init(_ index: Int) { self.index = index }
    init?(stringValue: String) { nil }
    init?(intValue: Int) { index = intValue }
    var intValue: Int? { index }
    var stringValue: String { "Index \(index)" }
}

struct NameKey: CodingKey {
    let stringValue: String
    init(_ name: String) { stringValue = name }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
    var intValue: Int? { nil }
}

/// A value on its way to being written. Containers are references: Codable hands out
/// container values that keep writing into the same object after they are returned.
enum JSONNode {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    /// A number already formatted (doubles, floats, decimals).
    case number(String)
    case string(String)
    /// Milliseconds since 1970, written as RFC 3339.
    case date(Int64)
    case object(JSONObject)
    case array(JSONArray)
    /// An encoder handed out by `superEncoder`: its value is whatever it was given.
    case deferred(CompactEncoder)

    /// The values Foundation's encoder writes itself rather than through their `encode(to:)`.
    /// (Compared by type, a pointer comparison each: a dynamic cast per candidate type was
    /// measurable for every nested value.)
    static func primitive<T: Encodable>(_ value: T, parent: CompactEncoder?, key: (any CodingKey)?) throws -> JSONNode? {
        let type = T.self
        if type == String.self { return .string(same(value, String.self)) }
        if type == Date.self { return .date(Int64((same(value, Date.self).timeIntervalSince1970 * 1000).rounded())) }
        if type == Int.self { return .int(Int64(same(value, Int.self))) }
        if type == Bool.self { return .bool(same(value, Bool.self)) }
        if type == Double.self { return try double(same(value, Double.self), parent: parent, key: key) }
        if type == Int64.self { return .int(same(value, Int64.self)) }
        if type == UInt64.self { return .uint(same(value, UInt64.self)) }
        if type == Int32.self { return .int(Int64(same(value, Int32.self))) }
        if type == UInt32.self { return .uint(UInt64(same(value, UInt32.self))) }
        if type == UInt.self { return .uint(UInt64(same(value, UInt.self))) }
        if type == Int16.self { return .int(Int64(same(value, Int16.self))) }
        if type == UInt16.self { return .uint(UInt64(same(value, UInt16.self))) }
        if type == Int8.self { return .int(Int64(same(value, Int8.self))) }
        if type == UInt8.self { return .uint(UInt64(same(value, UInt8.self))) }
        if type == Float.self { return try float(same(value, Float.self), parent: parent, key: key) }
        if type == URL.self { return .string(same(value, URL.self).absoluteString) }
        if type == Data.self { return .string(same(value, Data.self).base64EncodedString()) }
        if type == Decimal.self { return .number(same(value, Decimal.self).description) }
        return nil
    }

    /// `value` as the type it is known to be (`T.self == U.self` was checked): without the
    /// runtime's dynamic cast.
    @inline(__always)
    private static func same<T, U>(_ value: T, _: U.Type) -> U { unsafeBitCast(value, to: U.self) }

    static func double(_ value: Double, parent: CompactEncoder?, key: (any CodingKey)?) throws -> JSONNode {
        guard value.isFinite else {
            throw EncodingError.invalidValue(
                value, .init(codingPath: CompactEncoder.path(parent, key), debugDescription: "Unable to encode Double.\(value) directly in JSON."))
        }
        return .number(trimmed(value.description))
    }

    static func float(_ value: Float, parent: CompactEncoder?, key: (any CodingKey)?) throws -> JSONNode {
        guard value.isFinite else {
            throw EncodingError.invalidValue(
                value, .init(codingPath: CompactEncoder.path(parent, key), debugDescription: "Unable to encode Float.\(value) directly in JSON."))
        }
        return .number(trimmed(value.description))
    }

    /// Foundation writes an integral double without its ".0".
    private static func trimmed(_ text: String) -> String {
        text.hasSuffix(".0") ? String(text.dropLast(2)) : text
    }
}

final class JSONObject {
    var pairs: [(key: String, value: JSONNode)] = []
}

final class JSONArray {
    var items: [JSONNode] = []
}

/// The `Encoder` handed to a value's `encode(to:)`: it ends up holding one node. Encoders
/// link to the one that encodes their parent, so a coding path is walked up only when asked.
final class CompactEncoder: Encoder {
    let parent: CompactEncoder?
    let key: (any CodingKey)?
    private var node: JSONNode?
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(parent: CompactEncoder?, key: (any CodingKey)?) {
        self.parent = parent
        self.key = key
    }

    var codingPath: [any CodingKey] { Self.path(parent, key) }

    static func path(_ parent: CompactEncoder?, _ key: (any CodingKey)?) -> [any CodingKey] {
        var keys: [any CodingKey] = key.map { [$0] } ?? []
        var current = parent
        while let encoder = current {
            if let key = encoder.key { keys.append(key) }
            current = encoder.parent
        }
        return keys.reversed()
    }

    /// What was encoded; an encoder given nothing is an empty object (as Foundation writes it).
    var result: JSONNode { node ?? .object(JSONObject()) }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let object: JSONObject
        if case .object(let existing) = node {
            object = existing
        } else {
            object = JSONObject()
            node = .object(object)
        }
        return KeyedEncodingContainer(CompactKeyedContainer<Key>(encoder: self, object: object))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let array: JSONArray
        if case .array(let existing) = node {
            array = existing
        } else {
            array = JSONArray()
            node = .array(array)
        }
        return CompactUnkeyedContainer(encoder: self, array: array)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { CompactSingleValueContainer(encoder: self) }

    fileprivate func set(_ value: JSONNode) { node = value }
}

struct CompactKeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    /// The encoder of the object these keys belong to.
    let encoder: CompactEncoder
    let object: JSONObject
    var codingPath: [any CodingKey] { encoder.codingPath }

    private func add(_ key: Key, _ value: JSONNode) { object.pairs.append((key.stringValue, value)) }

    mutating func encodeNil(forKey key: Key) throws { add(key, .null) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { add(key, .bool(value)) }
    mutating func encode(_ value: String, forKey key: Key) throws { add(key, .string(value)) }
    mutating func encode(_ value: Int, forKey key: Key) throws { add(key, .int(Int64(value))) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { add(key, .int(value)) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { add(key, .uint(value)) }
    mutating func encode(_ value: Double, forKey key: Key) throws { add(key, try JSONNode.double(value, parent: encoder, key: key)) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        add(key, try CompactJSON.node(of: value, parent: encoder, key: key))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        let nested = CompactEncoder(parent: encoder, key: key)
        let container = nested.container(keyedBy: NestedKey.self)
        add(key, nested.result)
        return container
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let nested = CompactEncoder(parent: encoder, key: key)
        let container = nested.unkeyedContainer()
        add(key, nested.result)
        return container
    }

    mutating func superEncoder() -> any Encoder { superEncoder(named: NameKey("super")) }
    mutating func superEncoder(forKey key: Key) -> any Encoder { superEncoder(named: key) }

    private func superEncoder(named key: any CodingKey) -> any Encoder {
        let sub = CompactEncoder(parent: encoder, key: key)
        object.pairs.append((key.stringValue, .deferred(sub)))
        return sub
    }
}

struct CompactUnkeyedContainer: UnkeyedEncodingContainer {
    /// The encoder of the array.
    let encoder: CompactEncoder
    let array: JSONArray
    var codingPath: [any CodingKey] { encoder.codingPath }
    var count: Int { array.items.count }

    private var nextKey: IndexKey { IndexKey(array.items.count) }

    mutating func encodeNil() throws { array.items.append(.null) }
    mutating func encode(_ value: Bool) throws { array.items.append(.bool(value)) }
    mutating func encode(_ value: String) throws { array.items.append(.string(value)) }
    mutating func encode(_ value: Int) throws { array.items.append(.int(Int64(value))) }
    mutating func encode(_ value: Double) throws { array.items.append(try JSONNode.double(value, parent: encoder, key: nextKey)) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        array.items.append(try CompactJSON.node(of: value, parent: encoder, key: nextKey))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let nested = CompactEncoder(parent: encoder, key: nextKey)
        let container = nested.container(keyedBy: NestedKey.self)
        array.items.append(nested.result)
        return container
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let nested = CompactEncoder(parent: encoder, key: nextKey)
        let container = nested.unkeyedContainer()
        array.items.append(nested.result)
        return container
    }

    mutating func superEncoder() -> any Encoder {
        let sub = CompactEncoder(parent: encoder, key: nextKey)
        array.items.append(.deferred(sub))
        return sub
    }
}

struct CompactSingleValueContainer: SingleValueEncodingContainer {
    let encoder: CompactEncoder
    var codingPath: [any CodingKey] { encoder.codingPath }

    // The value replaces the encoder's node; its own key is already in the encoder's path.
    mutating func encodeNil() throws { encoder.set(.null) }
    mutating func encode(_ value: Bool) throws { encoder.set(.bool(value)) }
    mutating func encode(_ value: String) throws { encoder.set(.string(value)) }
    mutating func encode(_ value: Int) throws { encoder.set(.int(Int64(value))) }
    mutating func encode(_ value: Double) throws { encoder.set(try JSONNode.double(value, parent: encoder.parent, key: encoder.key)) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        encoder.set(try CompactJSON.node(of: value, parent: encoder.parent, key: encoder.key))
    }
}

/// Writes nodes as compact JSON: object keys sorted by their UTF-8 bytes (a key given twice
/// keeps its last value, as Foundation's dictionary-backed objects do), `/` not escaped,
/// control characters as Foundation writes them.
enum JSONValueWriter {
    static func write(_ node: JSONNode, into out: inout [UInt8]) throws {
        switch node {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .int(let i): appendDecimal(i, into: &out)
        case .uint(let u): appendDecimal(u, into: &out)
        case .number(let text): out.append(contentsOf: text.utf8)
        case .string(let s): appendString(s, into: &out)
        case .date(let ms):
            out.append(UInt8(ascii: "\""))
            RFC3339.append(milliseconds: ms, into: &out)
            out.append(UInt8(ascii: "\""))
        case .deferred(let encoder): try write(encoder.result, into: &out)
        case .array(let array):
            out.append(UInt8(ascii: "["))
            for (i, item) in array.items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                try write(item, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let object):
            out.append(UInt8(ascii: "{"))
            let pairs = object.pairs
            let order = sortedOrder(pairs)
            var first = true
            for (n, index) in order.enumerated() {
                // Of a key given twice only the last is written (ties are in order of position).
                if n + 1 < order.count, pairs[order[n + 1]].key == pairs[index].key { continue }
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                appendString(pairs[index].key, into: &out)
                out.append(UInt8(ascii: ":"))
                try write(pairs[index].value, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// The pairs' positions sorted by key (by UTF-8 bytes, as Foundation sorts them), ties by
    /// position. An insertion sort on each key's first 8 bytes as a number, the whole keys
    /// compared only when those are equal: objects here have a few to a few dozen keys, and a
    /// general sort comparing strings was a tenth of the encoder's time.
    static func sortedOrder(_ pairs: [(key: String, value: JSONNode)]) -> [Int] {
        let count = pairs.count
        if count < 2 { return Array(0..<count) }
        var prefixes = [UInt64](repeating: 0, count: count)
        for i in 0..<count {
            var prefix: UInt64 = 0
            var taken = 0
            for byte in pairs[i].key.utf8 {
                prefix = prefix << 8 | UInt64(byte)
                taken += 1
                if taken == 8 { break }
            }
            prefixes[i] = prefix << (8 * UInt64(8 - taken))
        }
        func precedes(_ a: Int, _ b: Int) -> Bool {
            if prefixes[a] != prefixes[b] { return prefixes[a] < prefixes[b] }
            let c = compareUTF8(pairs[a].key, pairs[b].key)
            return c != 0 ? c < 0 : a < b
        }
        var order = Array(0..<count)
        if count > 32 {
            order.sort(by: precedes)
            return order
        }
        for i in 1..<count {
            let current = order[i]
            var j = i
            while j > 0, precedes(current, order[j - 1]) {
                order[j] = order[j - 1]
                j -= 1
            }
            order[j] = current
        }
        return order
    }

    /// The keys' order: by their UTF-8 bytes, as Foundation sorts them.
    static func compareUTF8(_ a: String, _ b: String) -> Int32 {
        var a = a
        var b = b
        return a.withUTF8 { pa in
            b.withUTF8 { pb in
                let n = min(pa.count, pb.count)
                let c = n == 0 ? 0 : memcmp(pa.baseAddress!, pb.baseAddress!, n)
                if c != 0 { return c }
                return pa.count == pb.count ? 0 : (pa.count < pb.count ? -1 : 1)
            }
        }
    }

    static func appendDecimal<I: BinaryInteger>(_ value: I, into out: inout [UInt8]) {
        if value == 0 {
            out.append(UInt8(ascii: "0"))
            return
        }
        var magnitude = UInt64(value.magnitude)
        if value < 0 { out.append(UInt8(ascii: "-")) }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // up to 20 digits, filled from the end
        withUnsafeMutableBytes(of: &digits) { raw in
            var i = raw.count
            while magnitude > 0 {
                i -= 1
                raw[i] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: magnitude % 10)
                magnitude /= 10
            }
            out.append(contentsOf: raw[i...])
        }
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    static func appendString(_ string: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var s = string
        s.withUTF8 { bytes in
            var start = 0
            for (i, byte) in bytes.enumerated() where byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
                if start < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<i])) }
                start = i + 1
                out.append(UInt8(ascii: "\\"))
                switch byte {
                case UInt8(ascii: "\""): out.append(UInt8(ascii: "\""))
                case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
                case 0x08: out.append(UInt8(ascii: "b"))
                case 0x09: out.append(UInt8(ascii: "t"))
                case 0x0A: out.append(UInt8(ascii: "n"))
                case 0x0C: out.append(UInt8(ascii: "f"))
                case 0x0D: out.append(UInt8(ascii: "r"))
                default:
                    out.append(contentsOf: "u00".utf8)
                    out.append(hex[Int(byte >> 4)])
                    out.append(hex[Int(byte & 0x0F)])
                }
            }
            if start < bytes.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start...])) }
        }
        out.append(UInt8(ascii: "\""))
    }
}
