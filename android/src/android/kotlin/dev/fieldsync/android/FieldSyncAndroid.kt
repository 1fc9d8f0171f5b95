package dev.fieldsync.android

import android.app.Application
import android.util.Log
import dev.fieldsync.BackgroundJob
import dev.fieldsync.BackgroundJobOutcome
import dev.fieldsync.BackgroundPlan
import dev.fieldsync.FieldSync
import dev.fieldsync.ListenerHandle
import dev.fieldsync.StatusListener
import dev.fieldsync.SyncEvent
import dev.fieldsync.SyncEventListener
import dev.fieldsync.SyncStatus
import java.util.concurrent.atomic.AtomicBoolean
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow

/**
 * The Android shell of a [FieldSync] engine, on the framework's own APIs (no
 * AndroidX). It reports OS facts to the core and renders what the core
 * decides, and decides nothing itself:
 *
 * - the app's foreground state, from the application's activity lifecycle
 *   callbacks ([FieldSync.setAppActive]);
 * - the default network (connected, metered, transport), from
 *   ConnectivityManager's callback ([FieldSync.setNetwork]);
 * - the JobScheduler jobs of the core's [BackgroundPlan] (delivered in every
 *   [SyncStatus]): one that lets a sync started in the foreground finish in
 *   the background, and the opt-in periodic background sync
 *   ([FieldSync.backgroundSync]), both run by [FieldSyncJobService];
 * - the core's sync notifications (initial sync, Refresh, large catch-up).
 *
 * Install it once the user's engine is open, typically in
 * `Application.onCreate` (a process the OS starts for a job runs it too),
 * and close it when the user signs out. Logging goes to logcat (tag
 * `fieldsync`) through the core.
 */
class FieldSyncAndroid private constructor(
    application: Application,
    /** The engine this shell serves. */
    val fieldSync: FieldSync,
    notificationIcon: Int,
    channelName: String,
) : AutoCloseable {
    private val network = NetworkReporter(application, fieldSync)
    private val foreground = ForegroundReporter(application, fieldSync)
    private val jobs = SyncJobs(application)
    private val notifications = SyncNotifications(application, notificationIcon, channelName)
    private val handles = mutableListOf<ListenerHandle>()

    private val closed = AtomicBoolean(false)

    @Volatile
    private var appliedPlan: BackgroundPlan? = null

    private fun start() {
        handles += fieldSync.engine.addEventListener(object : SyncEventListener {
            override fun onEvent(event: SyncEvent) {
                if (event is SyncEvent.Notification) notifications.show(event)
            }
        })
        handles += fieldSync.engine.addStatusListener(object : StatusListener {
            override fun onStatus(status: SyncStatus) {
                if (status.background == appliedPlan) return
                try {
                    jobs.apply(status.background)
                    appliedPlan = status.background
                } catch (e: RuntimeException) {
                    // The system refused the job (too many jobs, a restriction): the next status tries again.
                    Log.w(SyncNotifications.TAG, "background job not scheduled: $e")
                }
            }
        })
        foreground.start()
        network.start()
        fieldSync.start()
    }

    /** The body of a job [FieldSyncJobService] runs: the network now, then the core's job. */
    internal suspend fun runJob(job: BackgroundJob): BackgroundJobOutcome {
        network.reportCurrent()
        return fieldSync.runBackgroundJob(job)
    }

    /**
     * Uninstalls the shell (the user signs out): stops the core's sync
     * service and the reports, cancels the jobs and removes the
     * notifications. The engine stays open; close it yourself. Calls
     * after the first do nothing.
     */
    override fun close() {
        if (closed.getAndSet(true)) return
        current.compareAndSet(this, null)
        fieldSync.stop()
        foreground.stop()
        network.stop()
        handles.forEach {
            it.cancel()
            it.close()
        }
        handles.clear()
        jobs.cancelAll()
        notifications.cancelAll()
    }

    companion object {
        private val current = MutableStateFlow<FieldSyncAndroid?>(null)

        /** The installed shell of this process, which the job service uses; null when none. */
        val installed: FieldSyncAndroid? get() = current.value

        /** Each installation (null when none), for a job that waits for one. */
        internal val installations: StateFlow<FieldSyncAndroid?> = current

        /**
         * Installs the shell for [fieldSync] in [application] (closing one
         * installed before) and starts the core's sync service. Call on the
         * main thread. [notificationIcon] is the small icon of the sync
         * notifications, [channelName] the name users see for their channel
         * (Android 8+).
         */
        fun install(
            application: Application,
            fieldSync: FieldSync,
            notificationIcon: Int,
            channelName: String = "Sync",
        ): FieldSyncAndroid {
            installed?.close()
            val shell = FieldSyncAndroid(application, fieldSync, notificationIcon, channelName)
            shell.start()
            current.value = shell
            return shell
        }
    }
}

/** A framework service every supported device has. */
internal inline fun <reified T : Any> android.content.Context.systemService(): T =
    checkNotNull(getSystemService(T::class.java)) { "no ${T::class.java.simpleName} on this device" }
