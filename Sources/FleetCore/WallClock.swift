#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// The wall clock a service reads; a value, so that a test (or a replay) can supply its own.
/// Sleeping and timeouts use the monotonic clock; this only says what time it is.
public struct WallClock: Sendable {
    public var now: @Sendable () -> Date

    public init(now: @escaping @Sendable () -> Date) { self.now = now }

    /// The system's clock.
    public static let system = WallClock { Date() }

    /// The system's clock moved by `offset` seconds (a test that plays a later day).
    public static func offset(by seconds: TimeInterval) -> WallClock { WallClock { Date().addingTimeInterval(seconds) } }
}
