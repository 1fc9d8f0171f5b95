package dev.fieldsync.android

import android.app.Activity
import android.app.Application
import android.app.job.JobParameters
import android.app.job.JobScheduler
import android.content.Context
import android.net.ConnectivityManager
import android.net.NetworkCapabilities
import dev.fieldsync.FieldSync
import dev.fieldsync.GateProxy
import dev.fieldsync.SyncEvent
import dev.fieldsync.SyncEventListener
import dev.fieldsync.TestClock
import dev.fieldsync.TestServer
import kotlinx.coroutines.runBlocking
import org.junit.Assert.assertTrue
import org.robolectric.Robolectric
import org.robolectric.RuntimeEnvironment
import org.robolectric.Shadows.shadowOf
import org.robolectric.android.controller.ActivityController
import org.robolectric.shadows.ShadowNetwork
import org.robolectric.shadows.ShadowNetworkCapabilities
import org.robolectric.shadows.ShadowNetworkInfo
import android.net.NetworkInfo
import android.app.ActivityManager
import android.os.Process
import java.util.Collections

/**
 * One device under Robolectric: a real `fieldsync server` on loopback behind
 * a [GateProxy], a real engine (the host build of the core through JNA) on a
 * SQLite file, and the Android shell installed in Robolectric's application.
 * The OS is Robolectric's: the test plays the user (activities) and the
 * system (network callbacks, starting a job).
 */
class AndroidHarness(workOrders: Int = 20, pageSize: Int = 5, clock: TestClock? = null) : AutoCloseable {
    val server = TestServer.start()
    private val token = server.user("tech-a", "technician")
    val proxy: GateProxy
    val fieldSync: FieldSync
    val application: Application = RuntimeEnvironment.getApplication()
    val events: MutableList<SyncEvent> = Collections.synchronizedList(mutableListOf<SyncEvent>())
    private val eventHandle: dev.fieldsync.ListenerHandle
    var shell: FieldSyncAndroid? = null
        private set
    private val activities = mutableListOf<ActivityController<Activity>>()

    init {
        server.seed(listOf("tech-a"), workOrders)
        proxy = GateProxy(server.url)
        fieldSync = runBlocking {
            val path = server.databasePath("android")
            if (clock == null) {
                FieldSync.open(path, proxy.url, token, pageSize = pageSize)
            } else {
                FieldSync.openForTests(path, proxy.url, token, clock, pageSize = pageSize)
            }
        }
        eventHandle = fieldSync.engine.addEventListener(object : SyncEventListener {
            override fun onEvent(event: SyncEvent) {
                events += event
            }
        })
    }

    /**
     * Installs the shell (as `Application.onCreate` would), in a process the
     * OS reports with [importance] (by default one with no screen yet).
     */
    fun install(importance: Int = ActivityManager.RunningAppProcessInfo.IMPORTANCE_CACHED): FieldSyncAndroid {
        val process = ActivityManager.RunningAppProcessInfo(application.packageName, Process.myPid(), arrayOf(application.packageName))
        process.importance = importance
        shadowOf(application.getSystemService(ActivityManager::class.java)!!).setProcesses(listOf(process))
        return FieldSyncAndroid.install(application, fieldSync, android.R.drawable.stat_notify_sync).also { shell = it }
    }

    /** A dispatcher's token on the same server. */
    val dispatcher: String by lazy { server.user("disp-1", "dispatcher") }

    val connectivity: ConnectivityManager get() = application.getSystemService(ConnectivityManager::class.java)!!
    val jobScheduler: JobScheduler get() = application.getSystemService(JobScheduler::class.java)!!

    /** The OS reports a new default network to every registered callback (and answers queries with it). */
    fun network(vararg transports: Int, metered: Boolean, validated: Boolean = true) {
        if (connectivity.activeNetwork == null) {
            shadowOf(connectivity).setActiveNetworkInfo(
                ShadowNetworkInfo.newInstance(
                    NetworkInfo.DetailedState.CONNECTED, ConnectivityManager.TYPE_WIFI, 0, true, NetworkInfo.State.CONNECTED,
                ),
            )
        }
        val network = connectivity.activeNetwork!!
        val caps = ShadowNetworkCapabilities.newInstance()
        transports.forEach { shadowOf(caps).addTransportType(it) }
        shadowOf(caps).addCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET)
        if (validated) shadowOf(caps).addCapability(NetworkCapabilities.NET_CAPABILITY_VALIDATED)
        if (!metered) shadowOf(caps).addCapability(NetworkCapabilities.NET_CAPABILITY_NOT_METERED)
        shadowOf(connectivity).setNetworkCapabilities(network, caps)
        val callbacks = shadowOf(connectivity).networkCallbacks
        assertTrue("the shell registered a network callback", callbacks.isNotEmpty())
        callbacks.forEach {
            it.onAvailable(network)
            it.onCapabilitiesChanged(network, caps)
        }
    }

    /** The OS reports that the default network is gone. */
    fun networkLost() {
        val network = connectivity.activeNetwork ?: ShadowNetwork.newInstance(1)
        shadowOf(connectivity).setActiveNetworkInfo(null)
        shadowOf(connectivity).networkCallbacks.forEach { it.onLost(network) }
    }

    /** The user opens the app (an activity is started and resumed). */
    fun openApp(): ActivityController<Activity> =
        Robolectric.buildActivity(Activity::class.java).setup().also { activities += it }

    /** The user leaves the app (its activities are paused and stopped). */
    fun leaveApp() {
        activities.forEach { it.pause().stop() }
    }

    /** Waits (bounded) until [condition] holds; fails with [what] otherwise. */
    fun eventually(what: String, seconds: Long = 60, condition: () -> Boolean) {
        val until = System.nanoTime() + seconds * 1_000_000_000
        while (!condition()) {
            if (System.nanoTime() > until) {
                throw AssertionError("timed out waiting for: $what (status: ${fieldSync.status.value})")
            }
            Thread.sleep(10)
        }
    }

    /** Syncs started so far. */
    fun syncsStarted(): Int = synchronized(events) { events.count { it is SyncEvent.SyncStarted } }

    override fun close() {
        shell?.close()
        activities.forEach { runCatching { it.destroy() } }
        eventHandle.cancel()
        eventHandle.close()
        fieldSync.close()
        proxy.close()
        server.close()
    }
}

/**
 * The parameters the system hands a job (the framework's constructor,
 * which differs between SDKs: the first int is the job id, everything else
 * empty).
 */
fun jobParameters(jobId: Int): JobParameters {
    val constructor = JobParameters::class.java.constructors
        .filter { c -> c.parameterTypes.none { it == android.os.Parcel::class.java } }
        .maxByOrNull { it.parameterCount } ?: error("no JobParameters constructor")
    var idGiven = false
    val args: List<Any?> = constructor.parameterTypes.map { type ->
        when (type) {
            Int::class.javaPrimitiveType -> if (idGiven) 0 else jobId.also { idGiven = true }
            Boolean::class.javaPrimitiveType -> false
            Long::class.javaPrimitiveType -> 0L
            else -> null
        }
    }
    return constructor.newInstance(*args.toTypedArray<Any?>()) as JobParameters
}

/** A context's framework service in a test. */
inline fun <reified T> Context.service(): T = getSystemService(T::class.java)!!
