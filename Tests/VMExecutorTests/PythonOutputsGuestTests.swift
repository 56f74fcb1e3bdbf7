import Foundation
import SquashMounts
import Testing
import VMExecTestSupport
import VMExecutor

extension RealGuests {
    /// Rich outputs: matplotlib figures (the libs shard make images builds from wheels)
    /// and values that draw themselves, in a real guest.
    @Suite("Python rich outputs in a real guest", .serialized, .timeLimit(.minutes(10)))
    struct PythonOutputsGuestTests {
        @Test("figures shown or left open come back as PNG in order with the output; values that draw themselves too")
        func figures() async throws {
            let guest = try await SharedGuest.started()
            defer { Task { await guest.shutdown() } }
            for name in ["numpy", "matplotlib"] {
                let path = try #require(TestImages.libsShardPath(name), "make images builds the \(name) shard")
                try await guest.attach(try Shard.open(path))
            }
            let code = """
                import matplotlib.pyplot as plt
                plt.plot([1, 4, 9])
                plt.show()
                print("after show", flush=True)
                plt.figure()
                plt.bar(["a", "b"], [3, 5])
                class Badge:
                    def _repr_html_(self):
                        return "<b>ok</b>"
                    def _repr_png_(self):
                        return b"\\x89PNG-not-really"
                Badge()
                """
            var order: [String] = []
            var result: PythonResult?
            for try await event in try await guest.python.stream(PythonCode(code)) {
                switch event {
                case .stdout(let b): order.append("stdout:" + String(decoding: b, as: UTF8.self))
                case .output(let o): order.append(o.mimeType)
                case .result(let r): result = r
                default: break
                }
            }
            let r = try #require(result)
            #expect(r.exception == nil, "\(String(describing: r.exception))")
            #expect(order == ["image/png", "stdout:after show\n", "image/png", "text/html", "image/png"], "\(order)")
            #expect(r.outputs.count == 4)
            #expect(r.outputs.first.map { Array($0.data.prefix(4)) } == [0x89, 0x50, 0x4E, 0x47], "a real PNG")
            #expect(r.outputs[1] == PythonOutput(mimeType: "image/png", data: [0x89] + Array("PNG-not-really".utf8)))
            #expect(r.outputs[2] == PythonOutput(mimeType: "text/html", data: Array("<b>ok</b>".utf8)))

            // A figure that cannot be drawn is said on stderr; the other figures and the result still come.
            let broken = try await guest.python.run(
                PythonCode(
                    "import matplotlib.pyplot as plt\nbad = plt.figure()\nbad.savefig = None\nplt.figure()\nplt.plot([1])\n'kept'"
                ))
            #expect(broken.value?.json == "\"kept\"" && broken.exception == nil, "\(String(describing: broken.exception))")
            #expect(broken.outputs.map(\.mimeType) == ["image/png"], "\(broken.outputs.count)")
            #expect(broken.stderrText.contains("figure 1 could not be drawn"), "\(broken.stderrText)")

            // Past 100 outputs, the rest are counted, not sent.
            let many = try await guest.python.run(
                PythonCode(
                    "import matplotlib.pyplot as plt\nfor i in range(103):\n    plt.figure(figsize=(1, 1), dpi=10)\n"))
            #expect(many.outputs.count == 100 && many.dropped["output"] == 3, "\(many.outputs.count) \(many.dropped)")
        }
    }
}
