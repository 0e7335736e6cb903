internal import CYAML

/// A YAML document as a tree, composed from libyaml's parser events.
///
/// EdgeFleet reads YAML (configuration files, kubeconfigs) but never writes it, and the
/// site agent must stay small: this reader links only the C libyaml and the standard
/// library, where Yams would load all of Foundation and ICU (about 10 MB of the agent's
/// resident memory; see docs/design-notes.md).
public indirect enum YAMLNode: Sendable, Hashable {
    case scalar(YAMLScalar)
    case sequence([YAMLNode])
    case mapping([YAMLPair])

    /// The text of a scalar, nil for collections and for null.
    public var string: String? {
        guard case .scalar(let scalar) = self, !scalar.isNull else { return nil }
        return scalar.text
    }

    public var sequence: [YAMLNode]? {
        guard case .sequence(let items) = self else { return nil }
        return items
    }

    public var mapping: [YAMLPair]? {
        guard case .mapping(let pairs) = self else { return nil }
        return pairs
    }

    public var isNull: Bool {
        guard case .scalar(let scalar) = self else { return false }
        return scalar.isNull
    }

    /// The value of a mapping's key given as a string (nil when absent or not a mapping).
    public subscript(key: String) -> YAMLNode? {
        mapping?.first { $0.key.string == key }?.value
    }

    /// The line (1-based) where the node starts in its document.
    public var line: Int {
        switch self {
        case .scalar(let scalar): scalar.line
        case .sequence(let items): items.first?.line ?? 0
        case .mapping(let pairs): pairs.first?.key.line ?? 0
        }
    }
}

public struct YAMLPair: Sendable, Hashable {
    public var key: YAMLNode
    public var value: YAMLNode

    public init(key: YAMLNode, value: YAMLNode) {
        self.key = key
        self.value = value
    }
}

public struct YAMLScalar: Sendable, Hashable {
    public enum Style: Sendable, Hashable {
        case plain, singleQuoted, doubleQuoted, literal, folded
    }

    public var text: String
    public var style: Style
    /// An explicit tag such as `tag:yaml.org,2002:str`, if the document gave one.
    public var tag: String?
    public var line: Int

    public init(_ text: String, style: Style = .plain, tag: String? = nil, line: Int = 0) {
        self.text = text
        self.style = style
        self.tag = tag
        self.line = line
    }

    /// A plain `null`, `~` or empty scalar, or one tagged `!!null` (YAML 1.2 core schema).
    public var isNull: Bool {
        if let tag { return tag == "tag:yaml.org,2002:null" }
        return style == .plain && ["", "~", "null", "Null", "NULL"].contains(text)
    }

    /// `true`/`false` in the core schema's spellings, only for plain scalars.
    public var bool: Bool? {
        guard style == .plain || tag == "tag:yaml.org,2002:bool" else { return nil }
        switch text {
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        default: return nil
        }
    }
}

/// Why a text is not a YAML document we can read, with the position libyaml reported.
public struct YAMLError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public var line: Int
    public var column: Int

    public init(_ message: String, line: Int, column: Int = 0) {
        self.message = message
        self.line = line
        self.column = column
    }

    public var description: String {
        column > 0 ? "line \(line), column \(column): \(message)" : "line \(line): \(message)"
    }
}

extension YAMLNode {
    /// Aliases (`*name`) expand to copies; this caps how many one document may use, so a
    /// "billion laughs" file cannot make a reader build an enormous tree.
    public static let aliasLimit = 1_000

    /// Parses one YAML document. Returns nil for an empty stream (no document at all);
    /// throws for a syntax error, an unknown alias, a duplicate mapping key or a second
    /// document.
    public static func parse(_ text: String) throws(YAMLError) -> YAMLNode? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { throw YAMLError("cannot initialise libyaml", line: 0) }
        defer { yaml_parser_delete(&parser) }
        var bytes = Array(text.utf8)
        return try bytes.withUnsafeMutableBufferPointer { (buffer) throws(YAMLError) -> YAMLNode? in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            var composer = Composer()
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else {
                    throw Composer.parserError(parser)
                }
                defer { yaml_event_delete(&event) }
                if try composer.handle(event) { break }
            }
            return composer.document
        }
    }
}

/// Builds the tree from the event stream with an explicit stack (no recursion, so a deeply
/// nested document cannot overflow the stack).
private struct Composer {
    private enum Frame {
        case sequence(anchor: String?, items: [YAMLNode])
        case mapping(anchor: String?, pairs: [YAMLPair], pendingKey: YAMLNode?, line: Int)
    }

    private var stack: [Frame] = []
    private var anchors: [String: YAMLNode] = [:]
    private var aliasesUsed = 0
    private var documents = 0
    private(set) var document: YAMLNode?

    static func parserError(_ parser: yaml_parser_t) -> YAMLError {
        let problem = parser.problem.map { String(cString: $0) } ?? "invalid YAML"
        let context = parser.context.map { " " + String(cString: $0) } ?? ""
        return YAMLError(
            problem + context, line: Int(parser.problem_mark.line) + 1, column: Int(parser.problem_mark.column) + 1)
    }

    private static func string(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        pointer.map { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
    }

    /// Returns true at the end of the stream.
    mutating func handle(_ event: yaml_event_t) throws(YAMLError) -> Bool {
        let line = Int(event.start_mark.line) + 1
        switch event.type {
        case YAML_STREAM_END_EVENT:
            return true
        case YAML_DOCUMENT_START_EVENT:
            documents += 1
            if documents > 1 { throw YAMLError("expected a single YAML document, found another", line: line) }
        case YAML_SCALAR_EVENT:
            let data = event.data.scalar
            let text: String =
                data.value.map { pointer in
                    String(decoding: UnsafeBufferPointer(start: pointer, count: data.length), as: UTF8.self)
                } ?? ""
            let style: YAMLScalar.Style =
                switch data.style {
                case YAML_SINGLE_QUOTED_SCALAR_STYLE: .singleQuoted
                case YAML_DOUBLE_QUOTED_SCALAR_STYLE: .doubleQuoted
                case YAML_LITERAL_SCALAR_STYLE: .literal
                case YAML_FOLDED_SCALAR_STYLE: .folded
                default: .plain
                }
            var tag = Self.string(data.tag)
            if tag == "!" { tag = nil }  // the non-specific tag: just "not plain"
            let node = YAMLNode.scalar(YAMLScalar(text, style: style, tag: tag, line: line))
            try add(node, anchor: Self.string(data.anchor), line: line)
        case YAML_ALIAS_EVENT:
            let name = Self.string(event.data.alias.anchor) ?? ""
            guard let node = anchors[name] else { throw YAMLError("unknown alias *\(name)", line: line) }
            aliasesUsed += 1
            if aliasesUsed > YAMLNode.aliasLimit {
                throw YAMLError("more than \(YAMLNode.aliasLimit) aliases in one document", line: line)
            }
            try add(node, anchor: nil, line: line)
        case YAML_SEQUENCE_START_EVENT:
            stack.append(.sequence(anchor: Self.string(event.data.sequence_start.anchor), items: []))
        case YAML_MAPPING_START_EVENT:
            stack.append(.mapping(anchor: Self.string(event.data.mapping_start.anchor), pairs: [], pendingKey: nil, line: line))
        case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
            switch stack.removeLast() {
            case .sequence(let anchor, let items):
                try add(.sequence(items), anchor: anchor, line: line)
            case .mapping(let anchor, let pairs, _, let start):
                try add(.mapping(pairs), anchor: anchor, line: start)
            }
        default:
            break  // stream start, document end, and nothing else carries content
        }
        return false
    }

    private mutating func add(_ node: YAMLNode, anchor: String?, line: Int) throws(YAMLError) {
        if let anchor { anchors[anchor] = node }
        guard let top = stack.popLast() else {
            document = node
            return
        }
        switch top {
        case .sequence(let anchor, var items):
            items.append(node)
            stack.append(.sequence(anchor: anchor, items: items))
        case .mapping(let anchor, var pairs, let pendingKey, let start):
            if let key = pendingKey {
                pairs.append(YAMLPair(key: key, value: node))
                stack.append(.mapping(anchor: anchor, pairs: pairs, pendingKey: nil, line: start))
            } else {
                if let name = node.string, pairs.contains(where: { $0.key.string == name }) {
                    throw YAMLError("duplicate key '\(name)'", line: line)
                }
                stack.append(.mapping(anchor: anchor, pairs: pairs, pendingKey: node, line: start))
            }
        }
    }
}
