package dev.fieldsync.platform

import dev.fieldsync.NetworkType
import dev.fieldsync.SyncEvent
import kotlinx.coroutines.flow.StateFlow

/*
 * The operating-system services the fieldsync shell needs, each behind a small
 * interface. The Android implementations (WorkManager, ConnectivityManager,
 * ProcessLifecycleOwner, NotificationManager) live in src/android/kotlin and
 * are compiled by the Gradle build only; JVM tests use fakes of these
 * interfaces, so everything above them runs without an Android device.
 */

/** The network as the OS reports it. */
data class NetworkState(
    /** True when a network with internet access is connected. */
    val up: Boolean,
    /** True when that network is metered (typically mobile data, not Wi-Fi). */
    val metered: Boolean,
    /** The kind of network, as far as the OS says. */
    val type: NetworkType = if (up) NetworkType.OTHER else NetworkType.NONE,
) {
    companion object {
        /** No network: the state until the first report. */
        val DOWN = NetworkState(up = false, metered = false)
    }
}

/** Reports network up/down and whether it is metered. */
interface ConnectivityMonitor {
    /** The current network; updated by the OS callbacks. */
    val state: StateFlow<NetworkState>
}

/** Whether the app is in the foreground (a screen visible) or the background. */
interface AppLifecycle {
    /** True while the app is in the foreground. */
    val foreground: StateFlow<Boolean>
}

/** What the background job should do, and when it may run. */
data class BackgroundSyncRequest(
    /** Run about this often, in minutes (Android allows 15 or more). */
    val intervalMinutes: Long,
    /** Run only on an unmetered network (the user chose Wi-Fi only). */
    val unmeteredOnly: Boolean,
)

/**
 * Schedules the OS background job that runs [BackgroundSync.run]. The job is
 * given time to let a started sync finish even when the app goes to the
 * background. Implemented with WorkManager on Android.
 */
interface BackgroundSyncScheduler {
    /** Schedules (or replaces) the periodic background sync job. */
    fun schedule(request: BackgroundSyncRequest)

    /** Cancels the background sync job. */
    fun cancel()
}

/** Shows sync progress and completion to the user (an Android notification). */
interface SyncNotificationPresenter {
    /**
     * Shows or updates the sync notification the core decided on (initial sync,
     * Refresh, large catch-up): its kind, phase, message and progress.
     */
    fun show(notification: SyncEvent.Notification)

    /** Removes the sync notification. */
    fun dismiss()
}
