package dev.fieldsync.platform

import dev.fieldsync.FieldSync
import dev.fieldsync.FieldSyncException
import dev.fieldsync.SyncEvent
import dev.fieldsync.userMessage
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Job
import kotlinx.coroutines.flow.combine
import kotlinx.coroutines.flow.distinctUntilChanged
import kotlinx.coroutines.launch

/**
 * Connects a [FieldSync] engine to the OS services of an app:
 *
 * - keeps the [BackgroundSyncScheduler] job scheduled, with the unmetered
 *   constraint while [wifiOnly] is on;
 * - starts a sync when the app comes to the foreground and the network allows
 *   it ([networkAllowsSync]), never while the app is in the background;
 * - shows the progress and end of initial downloads and refreshes through the
 *   [SyncNotificationPresenter].
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
    /** Minutes between background syncs. */
    private val backgroundIntervalMinutes: Long = 60,
) {
    private val jobs = mutableListOf<Job>()

    /** Sync only on an unmetered network (the user's Wi-Fi only choice). */
    @Volatile
    var wifiOnly: Boolean = false
        set(value) {
            field = value
            scheduleBackground()
        }

    /** True when a sync may start now: app in the foreground and the network allows it. */
    val syncAllowed: Boolean
        get() = lifecycle.foreground.value && networkAllowsSync(connectivity.state.value, wifiOnly)

    /** Schedules background sync and starts following the app and the network. */
    fun start() {
        scheduleBackground()
        jobs += scope.launch {
            combine(lifecycle.foreground, connectivity.state) { fg, net -> fg && networkAllowsSync(net, wifiOnly) }
                .distinctUntilChanged()
                .collect { allowed ->
                    if (allowed) {
                        try {
                            fieldSync.syncNow()
                        } catch (e: FieldSyncException) {
                            // Reported through the SyncFailed event and the Device Status.
                        }
                    }
                }
        }
        jobs += scope.launch {
            var notifying = false
            fieldSync.syncEvents().collect { event ->
                when (event) {
                    is SyncEvent.TableProgress -> if (event.initial) {
                        notifying = true
                        notifications.show(SyncNotification.Progress(event.table, event.rowsDone, event.rowsTotal))
                    }
                    is SyncEvent.SyncFinished -> if (notifying || event.report.tables.any { it.initial }) {
                        notifying = false
                        val report = event.report
                        notifications.show(
                            SyncNotification.Finished(report.tables.sumOf { it.rowsUpserted }, report.uploaded, report.conflicts.size),
                        )
                    }
                    is SyncEvent.SyncFailed -> if (notifying) {
                        notifying = false
                        notifications.show(SyncNotification.Failed(event.reason))
                    }
                    else -> Unit
                }
            }
        }
    }

    /** Refreshes [tables] on the user's request, with a notification of its progress and end. */
    suspend fun refresh(vararg tables: String) {
        notifications.show(SyncNotification.Progress(tables.joinToString(), 0, null))
        try {
            val report = fieldSync.refresh(*tables)
            notifications.show(SyncNotification.Finished(report.tables.sumOf { it.rowsUpserted }, report.uploaded, report.conflicts.size))
        } catch (e: FieldSyncException) {
            notifications.show(SyncNotification.Failed(e.userMessage))
            throw e
        }
    }

    /** Stops following the app and the network, and cancels the background job. */
    fun stop() {
        jobs.forEach { it.cancel() }
        jobs.clear()
        scheduler.cancel()
    }

    private fun scheduleBackground() {
        scheduler.schedule(BackgroundSyncRequest(backgroundIntervalMinutes, unmeteredOnly = wifiOnly))
    }
}
