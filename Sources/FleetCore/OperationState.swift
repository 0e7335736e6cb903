/// The lifecycle of a deferred operation.
///
/// `queued` → `dispatching` → `succeeded` | `failed`; `queued` → `cancelled` |
/// `expired` | `blocked` | `superseded`; `dispatching` → `queued` for a retry (or
/// after a crash); `blocked` → `queued` when an operator releases it, or
/// `cancelled`/`expired`; `failed` → `queued` when an operator retries it.
public enum OperationState: String, Codable, Sendable, Hashable, CaseIterable, Comparable {
    case queued, dispatching, succeeded, failed, cancelled, expired, blocked, superseded

    /// The states this one may move to.
    public var successors: Set<OperationState> {
        switch self {
        case .queued: [.dispatching, .cancelled, .expired, .blocked, .superseded]
        case .dispatching: [.succeeded, .failed, .queued]
        case .blocked: [.queued, .cancelled, .expired]
        case .failed: [.queued]
        case .succeeded, .cancelled, .expired, .superseded: []
        }
    }

    /// No way out: the operation is finished for good.
    public var isTerminal: Bool { successors.isEmpty }

    public func canMove(to next: OperationState) -> Bool { successors.contains(next) }

    /// Checks a transition; throws a readable error when it is not allowed.
    public func moving(to next: OperationState) throws(IllegalTransition) -> OperationState {
        guard canMove(to: next) else { throw IllegalTransition(from: self, to: next) }
        return next
    }

    public static func < (lhs: OperationState, rhs: OperationState) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// A refused state transition.
public struct IllegalTransition: Error, Sendable, Hashable, CustomStringConvertible {
    public var from: OperationState
    public var to: OperationState

    public init(from: OperationState, to: OperationState) {
        self.from = from
        self.to = to
    }

    public var description: String {
        from.isTerminal
            ? "the operation is \(from.rawValue), which is final; it cannot become \(to.rawValue)"
            : "an operation that is \(from.rawValue) cannot become \(to.rawValue)"
    }
}
