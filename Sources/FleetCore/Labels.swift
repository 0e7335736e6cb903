/// Site labels (docs/contract.md, "Labels and selectors"): the syntax of Kubernetes labels,
/// so that an operator's habits carry over. A key is `[PREFIX/]NAME`: NAME 1-63 characters,
/// letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit; PREFIX a DNS
/// subdomain (lowercase, at most 253). A value is empty or what a NAME may be. At most 64 labels.
public enum SiteLabels {
    public static let maximumCount = 64

    /// Why `key` cannot be a label key, or nil.
    public static func problem(key: String) -> String? {
        let parts = key.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { return "label key '\(printable(key))': at most one '/'" }
        if parts.count == 2 {
            let prefix = parts[0]
            guard !prefix.isEmpty, prefix.utf8.count <= 253,
                prefix.split(separator: ".", omittingEmptySubsequences: false).allSatisfy({ part in
                    !part.isEmpty && part.utf8.count <= 63 && part.utf8.allSatisfy { lowerAlnum($0) || $0 == UInt8(ascii: "-") }
                        && lowerAlnum(part.utf8.first!) && lowerAlnum(part.utf8.last!)
                })
            else { return "label key '\(printable(key))': the prefix must be a DNS subdomain (lowercase letters, digits, '-', '.')" }
        }
        guard let name = parts.last, isName(name) else {
            return "label key '\(printable(key))': the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        }
        return nil
    }

    /// Why `value` cannot be a label value, or nil.
    public static func problem(value: String) -> String? {
        value.isEmpty || isName(Substring(value))
            ? nil : "label value '\(printable(value))': at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    }

    /// Why this set of labels cannot be a site's, or nil.
    public static func problem(_ labels: [String: String]) -> String? {
        if labels.count > maximumCount { return "at most \(maximumCount) labels, got \(labels.count)" }
        for key in labels.keys.sorted() {
            if let problem = problem(key: key) ?? problem(value: labels[key]!) { return problem }
        }
        return nil
    }

    /// Parses `k=v,k2=v2` (flags, environment variables).
    public static func parse(_ text: String) throws(LabelError) -> [String: String] {
        var labels: [String: String] = [:]
        for item in text.split(separator: ",") {
            let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard pair.count == 2 else { throw LabelError("'\(printable(String(item)))': expected KEY=VALUE") }
            let key = String(pair[0]).trimmed
            let value = String(pair[1]).trimmed
            guard labels[key] == nil else { throw LabelError("label key '\(printable(key))' given twice") }
            labels[key] = value
        }
        if let problem = problem(labels) { throw LabelError(problem) }
        return labels
    }

    static func isName(_ text: Substring) -> Bool {
        let bytes = text.utf8
        guard let first = bytes.first, let last = bytes.last, bytes.count <= 63 else { return false }
        return alnum(first) && alnum(last)
            && bytes.allSatisfy { alnum($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") }
    }

    public static func alnum(_ b: UInt8) -> Bool { (0x30...0x39).contains(b) || (0x41...0x5A).contains(b) || (0x61...0x7A).contains(b) }
    static func lowerAlnum(_ b: UInt8) -> Bool { (0x30...0x39).contains(b) || (0x61...0x7A).contains(b) }

    /// For an error message: at most 80 characters, control characters left out.
    static func printable(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F }.prefix(80)))
    }
}

public struct LabelError: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// An equality-based label selector, as Kubernetes has them: requirements separated by commas,
/// all of which must hold. `key=value` (or `key==value`): the label is there with that value;
/// `key!=value`: it is not (a site without the label matches). An empty selector matches every site.
public struct LabelSelector: Sendable, Hashable, CustomStringConvertible {
    public enum Requirement: Sendable, Hashable {
        case equals(String, String)
        case notEquals(String, String)
    }

    public var requirements: [Requirement]

    public init(requirements: [Requirement] = []) {
        self.requirements = requirements
    }

    /// Parses `region=north,tier!=lab`.
    public init(parsing text: String) throws(LabelError) {
        var requirements: [Requirement] = []
        guard text.utf8.count <= 4096 else { throw LabelError("selector: longer than 4096 bytes") }
        guard !text.trimmed.isEmpty else {
            self.requirements = []
            return
        }
        for raw in text.split(separator: ",", omittingEmptySubsequences: false) {
            let item = String(raw).trimmed
            guard !item.isEmpty else { throw LabelError("selector '\(SiteLabels.printable(text))': an empty requirement") }
            let requirement: Requirement
            if let range = item.firstRange(of: "!=") {
                requirement = .notEquals(String(item[..<range.lowerBound]).trimmed, String(item[range.upperBound...]).trimmed)
            } else if let range = item.firstRange(of: "==") {
                requirement = .equals(String(item[..<range.lowerBound]).trimmed, String(item[range.upperBound...]).trimmed)
            } else if let range = item.firstRange(of: "=") {
                requirement = .equals(String(item[..<range.lowerBound]).trimmed, String(item[range.upperBound...]).trimmed)
            } else {
                throw LabelError("selector requirement '\(SiteLabels.printable(item))': expected KEY=VALUE, KEY==VALUE or KEY!=VALUE")
            }
            switch requirement {
            case .equals(let key, let value), .notEquals(let key, let value):
                if let problem = SiteLabels.problem(key: key) ?? SiteLabels.problem(value: value) { throw LabelError("selector: \(problem)") }
            }
            requirements.append(requirement)
        }
        self.requirements = requirements
    }

    public var isEmpty: Bool { requirements.isEmpty }

    public func matches(_ labels: [String: String]) -> Bool {
        for requirement in requirements {
            switch requirement {
            case .equals(let key, let value): if labels[key] != value { return false }
            case .notEquals(let key, let value): if labels[key] == value { return false }
            }
        }
        return true
    }

    public var description: String {
        requirements.map { requirement in
            switch requirement {
            case .equals(let key, let value): "\(key)=\(value)"
            case .notEquals(let key, let value): "\(key)!=\(value)"
            }
        }.joined(separator: ",")
    }
}
