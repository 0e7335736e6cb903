import FleetAggregator
import FleetCore
import Testing

@Suite("the site table: records in a dense array behind an index")
struct SiteTableTests {
    @Test("inserts, updates, removals and in-place changes in random order agree with a dictionary")
    func agreesWithDictionary() {
        var generator = SystemRandomNumberGenerator()
        let sites = (0..<300).map { try! SiteID("table-\($0)") }
        var table = SiteTable()
        var model: [SiteID: SiteRecord] = [:]
        for step in 0..<20_000 {
            let site = sites.randomElement(using: &generator)!
            switch Int.random(in: 0..<10, using: &generator) {
            case 0..<5:
                var record = SiteRecord(site: site)
                record.lastSeq = UInt64(step)
                table[site] = record
                model[site] = record
            case 5..<7:
                #expect(table.removeValue(forKey: site) == model.removeValue(forKey: site))
            case 7:
                table[site] = nil
                model[site] = nil
            case 8:
                table[site]?.duplicates += 1
                model[site]?.duplicates += 1
            default:
                table.updateEach { $0.seqGaps += 1 }
                for key in model.keys { model[key]?.seqGaps += 1 }
            }
            #expect(table.count == model.count)
            #expect(table[site] == model[site])
            #expect(table.contains(site) == (model[site] != nil))
            #expect(table.read(site, { $0.lastSeq }) == model[site].map(\.lastSeq))
        }
        #expect(Set(table.keys) == Set(model.keys))
        #expect(Dictionary(uniqueKeysWithValues: table.values.map { ($0.site, $0) }) == model)
        #expect(table.isEmpty == model.isEmpty)
    }
}
