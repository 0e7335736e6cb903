import FleetCore
import Testing

@Suite("site labels and label selectors (Kubernetes' syntax and meaning)")
struct LabelTests {
    @Test("keys and values: Kubernetes' rules; at most 64 labels")
    func validation() throws {
        for key in ["region", "tier", "edgefleet.io/region", "a", "a.b_c-d", String(repeating: "k", count: 63), "x.example.com/zone-1"] {
            #expect(SiteLabels.problem(key: key) == nil, "\(key)")
        }
        for key in ["", "-a", "a-", "a b", "a/b/c", "/a", "UPPER.Example/a", "a/", String(repeating: "k", count: 64), "ré", "a\u{0}b", "a,b", "a=b"] {
            #expect(SiteLabels.problem(key: key) != nil, "\(key)")
        }
        for value in ["", "north", "North_1.a-b", String(repeating: "v", count: 63)] { #expect(SiteLabels.problem(value: value) == nil, "\(value)") }
        for value in ["-x", "x-", "a b", String(repeating: "v", count: 64), "a/b", "a\nb"] { #expect(SiteLabels.problem(value: value) != nil, "\(value)") }
        let many = Dictionary(uniqueKeysWithValues: (0..<65).map { ("k\($0)", "v") })
        #expect(SiteLabels.problem(many)?.contains("64") == true)
        #expect(try SiteLabels.parse("region=north, tier=store") == ["region": "north", "tier": "store"])
        #expect(throws: LabelError.self) { try SiteLabels.parse("region") }
        #expect(throws: LabelError.self) { try SiteLabels.parse("region=north,region=south") }
    }

    @Test("selectors: = and == require the value, != excludes it (a site without the label matches), all must hold; bad ones refused")
    func selectors() throws {
        let north = ["region": "north", "tier": "store"]
        let lab = ["region": "north", "tier": "lab"]
        let bare: [String: String] = [:]
        let s = try LabelSelector(parsing: "region=north,tier!=lab")
        #expect(s.matches(north) && !s.matches(lab) && !s.matches(bare))
        #expect(try LabelSelector(parsing: "tier!=lab").matches(bare))
        #expect(try LabelSelector(parsing: "region==north").matches(north))
        #expect(try LabelSelector(parsing: " region = north ").matches(north))
        #expect(try LabelSelector(parsing: "").isEmpty && LabelSelector().matches(bare))
        #expect(try LabelSelector(parsing: "region=").matches(["region": ""]) == true)
        #expect(try LabelSelector(parsing: "region=north,tier!=lab").description == "region=north,tier!=lab")
        for bad in ["region", "region=north,", ",", "re gion=north", "region=no rth", "region in (a,b)", String(repeating: "a=b,", count: 2000)] {
            #expect(throws: LabelError.self, "\(bad)") { try LabelSelector(parsing: bad) }
        }
    }
}
