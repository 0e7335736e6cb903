/// The EdgeFleet release this build belongs to.
public enum EdgeFleetVersion {
    public static let current = "0.1.0"
}
