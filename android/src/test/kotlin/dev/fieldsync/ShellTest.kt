package dev.fieldsync

import dev.fieldsync.platform.AppLifecycle
import dev.fieldsync.platform.BackgroundSync
import dev.fieldsync.platform.BackgroundSyncRequest
import dev.fieldsync.platform.BackgroundSyncResult
import dev.fieldsync.platform.BackgroundSyncScheduler
import dev.fieldsync.platform.ConnectivityMonitor
import dev.fieldsync.platform.FieldSyncShell
import dev.fieldsync.platform.NetworkState
import dev.fieldsync.platform.SyncNotification
import dev.fieldsync.platform.SyncNotificationPresenter
import dev.fieldsync.platform.networkAllowsSync
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import java.net.ServerSocket

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
    val shown = Channel<SyncNotification>(Channel.UNLIMITED)
    override fun show(notification: SyncNotification) {
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
        sync = FieldSync.open(server.databasePath("shell"), server.url, tech)
    }

    @AfterEach
    fun tearDown() {
        scope.cancel()
        sync.close()
        server.close()
    }

    private suspend fun nextFinished(n: FakeNotifications): SyncNotification.Finished = withTimeout(30_000) {
        var next = n.shown.receive()
        while (next !is SyncNotification.Finished) {
            if (next is SyncNotification.Failed) error("sync failed: ${next.reason}")
            next = n.shown.receive()
        }
        next
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
    fun `sync starts only in the foreground on an allowed network, with notifications of the initial download`() = runBlocking<Unit> {
        val network = FakeConnectivity(NetworkState(up = true, metered = true))
        val lifecycle = FakeLifecycle(false)
        val notifications = FakeNotifications()
        val shell = FieldSyncShell(sync, network, lifecycle, FakeScheduler(), notifications, scope)
        shell.wifiOnly = true
        shell.start()

        // Background, or metered with Wi-Fi only: no sync may start.
        assertEquals(false, shell.syncAllowed)
        lifecycle.foreground.value = true
        assertEquals(false, shell.syncAllowed)
        // Wi-Fi comes up while in the foreground: the initial download runs and is notified.
        network.state.value = NetworkState(up = true, metered = false)
        assertEquals(true, shell.syncAllowed)
        val done = nextFinished(notifications)
        assertTrue(done.rowsDownloaded > 0)
        assertTrue(sync.status().tables.all { it.initialSyncDone })

        // A user's Refresh of a table is notified too.
        shell.refresh("bookings")
        val refresh = nextFinished(notifications)
        assertEquals(0, refresh.conflicts)
        shell.stop()
    }

    @Test
    fun `sync is allowed on an up network, and metered only without Wi-Fi only`() {
        assertEquals(false, networkAllowsSync(NetworkState.DOWN, wifiOnly = false))
        assertEquals(true, networkAllowsSync(NetworkState(up = true, metered = true), wifiOnly = false))
        assertEquals(false, networkAllowsSync(NetworkState(up = true, metered = true), wifiOnly = true))
        assertEquals(true, networkAllowsSync(NetworkState(up = true, metered = false), wifiOnly = true))
    }

    @Test
    fun `the background job body syncs, skips or asks for a retry`() = runBlocking<Unit> {
        val down = FakeConnectivity(NetworkState.DOWN)
        assertEquals(BackgroundSyncResult.Skipped, BackgroundSync.run(sync, down, wifiOnly = false))
        val metered = FakeConnectivity(NetworkState(up = true, metered = true))
        assertEquals(BackgroundSyncResult.Skipped, BackgroundSync.run(sync, metered, wifiOnly = true))
        val done = BackgroundSync.run(sync, metered, wifiOnly = false)
        assertTrue(done is BackgroundSyncResult.Done && done.report.tables.isNotEmpty())

        val port = ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress()).use { it.localPort }
        FieldSync.open(server.databasePath("unreachable"), "http://127.0.0.1:$port", "t").use { unreachable ->
            val retry = BackgroundSync.run(unreachable, metered, wifiOnly = false)
            assertTrue(retry is BackgroundSyncResult.Retry, "$retry")
        }
    }
}
