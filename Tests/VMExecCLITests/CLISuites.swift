import Testing
import VMExecTestSupport

/// Every suite that runs the vmexec command is nested here and runs one test
/// at a time: each boots TCG guests, and a 2-core machine cannot take many
/// at once (see RealGuests in VMExecutorTests, which `make test` runs apart).
@Suite("The vmexec command", .serialized, .enabled(if: TestImages.ready, "the guest images are not built: run make images"))
struct CLISuites {}

/// The one failure when the images are missing (the suites above are then off).
@Test("the guest images the CLI suites need are built")
func cliImagesBuilt() {
    #expect(TestImages.missing == nil, "\(TestImages.missing ?? "")")
}
