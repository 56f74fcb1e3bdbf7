import Foundation
import OpenAPIRuntime
import VMExecService
import VMExecutor

/// Who is asking: set by ``CallerMiddleware`` from the listener and the
/// bearer token, read by every handler. Sandboxes are looked up within it.
enum Caller {
    @TaskLocal static var owner = "local"
}

/// The handlers of docs/openapi.yaml: each checks what the generated code
/// cannot (ranges, paths), calls the core, and converts the answer. Errors
/// are thrown as they are; ``FailureMiddleware`` turns them into the one
/// error body.
struct ServiceAPI: APIProtocol {
    let registry: SandboxRegistry
    /// Bytes an upload may have.
    let uploadLimit: Int

    func getHealth(_ input: Operations.GetHealth.Input) async throws -> Operations.GetHealth.Output {
        let load = await registry.load()
        return .ok(
            .init(
                body: .json(
                    .init(
                        status: .ok, sandboxes: load.sandboxes, guestsRunning: load.guestsRunning,
                        jobsQueued: load.jobsQueued, jobsRunning: load.jobsRunning))))
    }

    func getMetrics(_ input: Operations.GetMetrics.Input) async throws -> Operations.GetMetrics.Output {
        let load = await registry.load()
        DaemonMetrics.record(load)
        return .ok(.init(body: .plainText(HTTPBody(DaemonMetrics.text()))))
    }

    func listHosts(_ input: Operations.ListHosts.Input) async throws -> Operations.ListHosts.Output {
        .ok(.init(body: .json(await registry.hosts.list().map(Components.Schemas.Host.init))))
    }

    func getVersion(_ input: Operations.GetVersion.Input) async throws -> Operations.GetVersion.Output {
        .ok(
            .init(
                body: .json(
                    .init(version: vmexecVersion, api: "1", architecture: registry.configuration.architecture.rawValue))))
    }

    // MARK: sandboxes

    func listSandboxes(_ input: Operations.ListSandboxes.Input) async throws -> Operations.ListSandboxes.Output {
        .ok(.init(body: .json(await registry.list(owner: Caller.owner).map(Components.Schemas.Sandbox.init))))
    }

    func createSandbox(_ input: Operations.CreateSandbox.Input) async throws -> Operations.CreateSandbox.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        var spec = SandboxSpec(
            shards: body.shards ?? [], store: body.store, memoryMiB: body.memoryMiB ?? 512, cpus: body.cpus ?? 1,
            limits: try body.limits?.limits(), network: body.network ?? false, concurrency: body.concurrency ?? 4,
            idleTimeoutSeconds: body.idleTimeoutSeconds, lifetimeSeconds: body.lifetimeSeconds)
        spec.hostname = body.hostname
        spec.entrypoint = body.entrypoint
        spec.folders = body.mounts.map {
            $0.map { SandboxFolder(host: $0.host, guest: $0.guest, mode: $0.mode?.rawValue ?? "ro") }
        }
        let status = try await registry.create(owner: Caller.owner, name: body.name, spec: spec)
        return .created(.init(body: .json(.init(status))))
    }

    func getSandbox(_ input: Operations.GetSandbox.Input) async throws -> Operations.GetSandbox.Output {
        .ok(.init(body: .json(.init(try await registry.status(owner: Caller.owner, name: input.path.sandbox)))))
    }

    func deleteSandbox(_ input: Operations.DeleteSandbox.Input) async throws -> Operations.DeleteSandbox.Output {
        try await registry.delete(owner: Caller.owner, name: input.path.sandbox)
        return .noContent(.init())
    }

    func restartSandbox(_ input: Operations.RestartSandbox.Input) async throws -> Operations.RestartSandbox.Output {
        .ok(.init(body: .json(.init(try await registry.restart(owner: Caller.owner, name: input.path.sandbox)))))
    }

    static let unsupportedBody = VMExecError(.invalidRequest, "send the body as the content type the API names")
}
