import Testing
import YAMLReader

@Suite struct YAMLNodeTests {
    @Test func composesMappingsSequencesAndScalarStyles() throws {
        let text = """
            # a comment
            site: berlin-01
            port: 8883
            quoted: "8883"
            empty:
            tilde: ~
            words: [a, 'b c', "d"]
            block: |
              line one
              line two
            nested:
              - name: x
                command: [true]
            """
        let node = try #require(try YAMLNode.parse(text))
        #expect(node["site"]?.string == "berlin-01")
        #expect(node["port"] == .scalar(YAMLScalar("8883", line: 3)))
        guard case .scalar(let quoted) = node["quoted"] else { Issue.record("quoted is not a scalar"); return }
        #expect(quoted.style == .doubleQuoted && quoted.text == "8883")
        #expect(node["empty"]?.isNull == true)
        #expect(node["tilde"]?.isNull == true)
        #expect(node["words"]?.sequence?.compactMap(\.string) == ["a", "b c", "d"])
        #expect(node["block"]?.string == "line one\nline two\n")
        #expect(node["nested"]?.sequence?.first?["command"]?.sequence?.first?.string == "true")
        #expect(node["missing"] == nil)
        #expect(node["nested"]?.line == 12)  // where its first item starts
    }

    @Test func anEmptyOrCommentOnlyDocumentIsNil() throws {
        #expect(try YAMLNode.parse("") == nil)
        #expect(try YAMLNode.parse("# nothing here\n\n") == nil)
    }

    @Test func aliasesExpandAndUnknownOnesAreErrors() throws {
        let node = try #require(try YAMLNode.parse("base: &b [1, 2]\ncopy: *b\n"))
        #expect(node["copy"]?.sequence?.compactMap(\.string) == ["1", "2"])
        #expect(throws: YAMLError.self) { try YAMLNode.parse("a: *nowhere\n") }
    }

    @Test func syntaxErrorsNameTheLine() {
        do {
            _ = try YAMLNode.parse("a: 1\nb: [unclosed\nc: 3\n")
            Issue.record("an unclosed flow sequence parsed")
        } catch {
            #expect(error.line >= 2)
            #expect(error.description.contains("line"))
        }
    }

    @Test func duplicateKeysAreRefusedNotSilentlyOverwritten() {
        do {
            _ = try YAMLNode.parse("site: a\nsite: b\n")
            Issue.record("a duplicate key parsed")
        } catch {
            #expect(error.description.contains("duplicate key 'site'"))
            #expect(error.line == 2)
        }
    }

    @Test func aSecondDocumentIsRefused() {
        #expect(throws: YAMLError.self) { try YAMLNode.parse("a: 1\n---\nb: 2\n") }
    }

    @Test func aliasBombsStopAtTheLimit() {
        var text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for level in 1...9 {
            let refs = Array(repeating: "*a\(level - 1)", count: 10).joined(separator: ", ")
            text += "a\(level): &a\(level) [\(refs)]\n"
        }
        text += "boom: [" + Array(repeating: "*a9", count: 1_000).joined(separator: ", ") + "]\n"
        do {
            _ = try YAMLNode.parse(text)
            Issue.record("the alias bomb parsed")
        } catch {
            #expect(error.description.contains("aliases"))
        }
    }

    @Test func deepNestingDoesNotOverflowTheStack() throws {
        let depth = 50_000
        let text = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
        // libyaml itself may refuse this depth; either way we must return, not crash.
        var node = try? YAMLNode.parse(text)
        var seen = 0
        while let inner = node?.sequence?.first {
            node = inner
            seen += 1
        }
        #expect(seen == 0 || seen == depth - 1)
    }
}

@Suite struct YAMLDecoderTests {
    struct Check: Decodable, Equatable {
        var name: String
        var command: [String]
        var timeout: Int?
        var enabled: Bool?
        var ratio: Double?
    }

    @Test func decodesNestedStructuresWithTheCoreSchema() throws {
        let checks = try YAMLDecoder().decode(
            [Check].self,
            from: """
                - name: api
                  command: [kubectl, get, --raw=/readyz]
                  timeout: 0x10
                  enabled: true
                  ratio: 0.5
                - name: ssh
                  command: [nc, -z, node1, "22"]
                  timeout: ~
                """)
        #expect(
            checks == [
                Check(name: "api", command: ["kubectl", "get", "--raw=/readyz"], timeout: 16, enabled: true, ratio: 0.5),
                Check(name: "ssh", command: ["nc", "-z", "node1", "22"], timeout: nil, enabled: nil, ratio: nil),
            ])
    }

    @Test func mismatchesCarryTheCodingPath() {
        func path(_ text: String) -> String? {
            do {
                _ = try YAMLDecoder().decode([Check].self, from: text)
                return nil
            } catch let DecodingError.typeMismatch(_, context), let DecodingError.dataCorrupted(context),
                let DecodingError.valueNotFound(_, context)
            {
                return context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
            } catch let DecodingError.keyNotFound(key, context) {
                return (context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue } + [key.stringValue]).joined(separator: ".")
            } catch {
                return "unexpected \(error)"
            }
        }
        #expect(path("- {name: a, command: [x], timeout: soon}") == "0.timeout")
        #expect(path("- {name: a, command: [x]}\n- {name: b, command: x}") == "1.command")
        #expect(path("- {name: a}") == "0.command")
        #expect(path("- {name: a, command: [x], enabled: yes}") == "0.enabled")
        #expect(path("- {name: a, command: [x], timeout: 99999999999999999999}") == "0.timeout")
    }

    struct Strict: Decodable {
        struct Refused: Error {}
        init(from decoder: any Decoder) throws { throw Refused() }
    }

    @Test func errorsFromATypesOwnInitKeepTheirPathAndCause() {
        do {
            _ = try YAMLDecoder().decode([String: [Strict]].self, from: "a: [1, 2]")
            Issue.record("decoded")
        } catch DecodingError.dataCorrupted(let context) {
            #expect(context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue } == ["a", "0"])
            #expect(context.underlyingError is Strict.Refused)
        } catch {
            Issue.record("unexpected \(error)")
        }
    }
}
