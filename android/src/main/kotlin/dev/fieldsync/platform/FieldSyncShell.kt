package dev.fieldsync.platform

import dev.fieldsync.FieldSync
import dev.fieldsync.SyncEvent
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Job
import kotlinx.coroutines.launch

/**
 * Connects a [FieldSync] engine to the OS services of an app. It reports OS
 * facts and renders; every decision is the core's:
 *
 * - reports the app's foreground state ([FieldSync.setAppActive]) and the OS
 *   network ([FieldSync.setNetwork]) on every change, and starts the core's
 *   sync service, which syncs due tables by itself;
 * - keeps the [BackgroundSyncScheduler] job scheduled (its body is
 *   [BackgroundSync.run], one step of the core's scheduler), with the
 *   unmetered constraint while the Wi-Fi only setting is on;
 * - shows the notifications the core raises through the [SyncNotificationPresenter].
 *
 * Create it once (for example in `Application.onCreate`) with the Android
 * implementations of the interfaces, and call [start].
 */
class FieldSyncShell(
    private val fieldSync: FieldSync,
    private val connectivity: ConnectivityMonitor,
    private val lifecycle: AppLifecycle,
    private val scheduler: BackgroundSyncScheduler,
    private val notifications: SyncNotificationPresenter,
    private val scope: CoroutineScope,
    /** Minutes between background jobs. */
    private val backgroundIntervalMinutes: Long = 60,
) {
    private val jobs = mutableListOf<Job>()

    /** The user's Wi-Fi only setting (kept in the device database by the core). */
    var wifiOnly: Boolean
        get() = fieldSync.wifiOnly
        set(value) {
            fieldSync.wifiOnly = value
            scheduleBackground()
        }

    /** Starts reporting the app and the network, the service and the background job. */
    fun start() {
        scheduleBackground()
        reportNetwork(connectivity.state.value)
        fieldSync.setAppActive(lifecycle.foreground.value)
        jobs += scope.launch { lifecycle.foreground.collect { fieldSync.setAppActive(it) } }
        jobs += scope.launch { connectivity.state.collect { reportNetwork(it) } }
        jobs += scope.launch {
            fieldSync.syncEvents().collect { event ->
                if (event is SyncEvent.Notification) notifications.show(event)
            }
        }
        fieldSync.start()
    }

    /** Stops the service, the reports and the background job. */
    fun stop() {
        fieldSync.stop()
        jobs.forEach { it.cancel() }
        jobs.clear()
        scheduler.cancel()
    }

    private fun reportNetwork(state: NetworkState) =
        fieldSync.setNetwork(state.up, state.metered, state.type)

    private fun scheduleBackground() {
        scheduler.schedule(BackgroundSyncRequest(backgroundIntervalMinutes, unmeteredOnly = fieldSync.wifiOnly))
    }
}
