package dev.fieldsync

import dev.fieldsync.platform.AppLifecycle
import dev.fieldsync.platform.BackgroundSync
import dev.fieldsync.platform.BackgroundSyncRequest
import dev.fieldsync.platform.BackgroundSyncResult
import dev.fieldsync.platform.BackgroundSyncScheduler
import dev.fieldsync.platform.ConnectivityMonitor
import dev.fieldsync.platform.FieldSyncShell
import dev.fieldsync.platform.NetworkState
import dev.fieldsync.platform.SyncNotificationPresenter
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test

/** Fakes of the OS services: the only mocks, behind the shell's interfaces. */
class FakeConnectivity(initial: NetworkState) : ConnectivityMonitor {
    override val state = MutableStateFlow(initial)
}

class FakeLifecycle(initial: Boolean) : AppLifecycle {
    override val foreground = MutableStateFlow(initial)
}

class FakeScheduler : BackgroundSyncScheduler {
    val requests = mutableListOf<BackgroundSyncRequest?>()
    override fun schedule(request: BackgroundSyncRequest) {
        requests += request
    }
    override fun cancel() {
        requests += null
    }
}

class FakeNotifications : SyncNotificationPresenter {
    val shown = Channel<SyncEvent.Notification>(Channel.UNLIMITED)
    override fun show(notification: SyncEvent.Notification) {
        shown.trySend(notification)
    }
    override fun dismiss() = Unit
}

/**
 * The shell (background job, connectivity, foreground state, notifications)
 * with fakes of the OS services, driving a real engine against a real server.
 */
class ShellTest {
    private lateinit var server: TestServer
    private lateinit var sync: FieldSync
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)

    @BeforeEach
    fun setUp() {
        server = TestServer.start()
        val tech = server.user("tech-a", "technician")
        server.seed(listOf("tech-a"), 10)
        sync = openBlocking(server.databasePath("shell"), server.url, tech)
    }

    @AfterEach
    fun tearDown() {
        scope.cancel()
        sync.close()
        server.close()
    }

    @Test
    fun `background job follows Wi-Fi only with the unmetered constraint`() {
        val scheduler = FakeScheduler()
        val shell = FieldSyncShell(
            sync, FakeConnectivity(NetworkState.DOWN), FakeLifecycle(false), scheduler, FakeNotifications(), scope,
            backgroundIntervalMinutes = 30,
        )
        shell.start()
        assertEquals(BackgroundSyncRequest(30, unmeteredOnly = false), scheduler.requests.last())
        shell.wifiOnly = true
        assertEquals(BackgroundSyncRequest(30, unmeteredOnly = true), scheduler.requests.last())
        shell.stop()
        assertEquals(null, scheduler.requests.last(), "stop cancels the job")
    }

    @Test
    fun `the shell reports the app and the network, the core syncs and notifies`() = runBlocking<Unit> {
        val network = FakeConnectivity(NetworkState(up = true, metered = true, type = NetworkType.CELLULAR))
        val lifecycle = FakeLifecycle(true)
        val notifications = FakeNotifications()
        val shell = FieldSyncShell(sync, network, lifecycle, FakeScheduler(), notifications, scope)
        shell.wifiOnly = true
        shell.start()

        // Metered with Wi-Fi only: the core holds the sync, and says why.
        withTimeout(30_000) { sync.status.first { it.waitingFor == Blocker.METERED_NETWORK } }
        assertTrue(sync.offlineProfile() == null, "no sync started")

        // Wi-Fi comes up: the core downloads the profile and notifies the initial sync.
        network.state.value = NetworkState(up = true, metered = false, type = NetworkType.WIFI)
        val done = withTimeout(30_000) {
            var n = notifications.shown.receive()
            while (n.phase != NotificationPhase.COMPLETED) n = notifications.shown.receive()
            n
        }
        assertEquals(NotificationKind.INITIAL_SYNC, done.kind)
        assertTrue(done.refreshView)
        assertTrue(sync.status().tables.all { it.initialSyncDone })

        // The app goes to the background: reported to the core.
        lifecycle.foreground.value = false
        withTimeout(30_000) { sync.status.first { !it.appActive } }
        shell.stop()
    }

    @Test
    fun `the background job body runs the core's due step, skips or asks for a retry`() = runBlocking<Unit> {
        sync.wifiOnly = true
        val metered = FakeConnectivity(NetworkState(up = true, metered = true, type = NetworkType.CELLULAR))
        assertEquals(BackgroundSyncResult.Skipped, BackgroundSync.run(sync, metered))
        val wifi = FakeConnectivity(NetworkState(up = true, metered = false, type = NetworkType.WIFI))
        val done = BackgroundSync.run(sync, wifi)
        assertTrue(done is BackgroundSyncResult.Done && done.report.tables.isNotEmpty(), "$done")
        assertEquals(BackgroundSyncResult.Skipped, BackgroundSync.run(sync, wifi), "nothing due right after")
    }
}
