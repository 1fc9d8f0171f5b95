// iOS implementations of the OS glue protocols.

import Foundation

#if canImport(Network)
import Network

/// ConnectivityMonitor over NWPathMonitor: metered means an expensive or
/// constrained path (cellular, personal hotspot, Low Data Mode).
public final class PathConnectivityMonitor: ConnectivityMonitor, @unchecked Sendable {
    private let monitor = NWPathMonitor()
    private var continuations: [AsyncStream<NetworkState>.Continuation] = []
    private let lock = NSLock()
    public private(set) var state: NetworkState = .down

    public init(queue: DispatchQueue = DispatchQueue(label: "dev.fieldsync.network")) {
        monitor.pathUpdateHandler = { [weak self] path in
            let next = NetworkState(up: path.status == .satisfied, metered: path.isExpensive || path.isConstrained)
            self?.publish(next)
        }
        monitor.start(queue: queue)
    }

    public var updates: AsyncStream<NetworkState> {
        AsyncStream { continuation in
            lock.lock()
            continuations.append(continuation)
            lock.unlock()
            continuation.yield(state)
        }
    }

    private func publish(_ next: NetworkState) {
        lock.lock()
        state = next
        let targets = continuations
        lock.unlock()
        targets.forEach { $0.yield(next) }
    }

    deinit { monitor.cancel() }
}
#endif

#if canImport(BackgroundTasks) && os(iOS)
import BackgroundTasks

/// BackgroundSyncScheduler over BGTaskScheduler. Register `identifier` in
/// Info.plist (BGTaskSchedulerPermittedIdentifiers) and call `register` at launch.
public final class BGTaskSyncScheduler: BackgroundSyncScheduler {
    public let identifier: String
    private let client: FieldSyncClient
    private let connectivity: ConnectivityMonitor
    private var interval: TimeInterval = 3600
    private var unmeteredOnly = false

    public init(identifier: String, client: FieldSyncClient, connectivity: ConnectivityMonitor) {
        self.identifier = identifier
        self.client = client
        self.connectivity = connectivity
    }

    /// Registers the task handler; call before the app finishes launching.
    public func register() {
        BGTaskScheduler.shared.register(forTaskWithIdentifier: identifier, using: nil) { task in
            guard networkAllowsSync(self.connectivity.state, wifiOnly: self.unmeteredOnly) else {
                task.setTaskCompleted(success: true)
                self.submit()
                return
            }
            let work = Task {
                do {
                    _ = try await self.client.syncNow()
                    task.setTaskCompleted(success: true)
                } catch {
                    task.setTaskCompleted(success: false)
                }
            }
            task.expirationHandler = { work.cancel() }
            self.submit()
        }
    }

    public func schedule(every interval: TimeInterval, unmeteredOnly: Bool) {
        self.interval = interval
        self.unmeteredOnly = unmeteredOnly
        submit()
    }

    public func cancel() {
        BGTaskScheduler.shared.cancel(taskRequestWithIdentifier: identifier)
    }

    private func submit() {
        let request = BGProcessingTaskRequest(identifier: identifier)
        request.requiresNetworkConnectivity = true
        request.earliestBeginDate = Date(timeIntervalSinceNow: interval)
        try? BGTaskScheduler.shared.submit(request)
    }
}
#endif
