package dev.fieldsync.android

import android.Manifest
import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.app.PendingIntent
import android.content.Context
import android.content.pm.PackageManager
import android.os.Build
import android.util.Log
import dev.fieldsync.NotificationKind
import dev.fieldsync.NotificationPhase
import dev.fieldsync.SyncEvent

/**
 * Renders the core's sync notifications (initial sync, a table's Refresh, a
 * large catch-up): its message, a progress bar while it runs, then its
 * completion or failure; tapping opens the app. One notification per kind,
 * updated in place, on a low-importance channel (channels exist from
 * Android 8, API 26; below that the notification has a low priority).
 * Without the POST_NOTIFICATIONS permission (Android 13+) nothing is shown
 * and sync goes on.
 */
internal class SyncNotifications(
    private val context: Context,
    private val smallIcon: Int,
    channelName: String,
) {
    private val manager = context.systemService<NotificationManager>()

    init {
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O) Api26.createChannel(manager, channelName)
    }

    /** Shows or updates the notification the core raised. */
    fun show(notification: SyncEvent.Notification) {
        if (!allowed()) return
        val builder = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O) {
            Api26.builder(context)
        } else {
            @Suppress("DEPRECATION") // The only constructor before API 26.
            Notification.Builder(context).setPriority(Notification.PRIORITY_LOW)
        }
        builder.setSmallIcon(smallIcon)
            .setContentTitle(notification.message)
            .setOnlyAlertOnce(true)
            .setShowWhen(false)
        launchIntent()?.let(builder::setContentIntent)
        when (notification.phase) {
            NotificationPhase.PROGRESS -> {
                val total = notification.rowsTotal
                builder.setOngoing(true)
                if (total != null && total > 0) {
                    builder.setProgress(PROGRESS_MAX, (notification.rowsDone * PROGRESS_MAX / total).toInt().coerceIn(0, PROGRESS_MAX), false)
                } else {
                    builder.setProgress(0, 0, true)
                }
            }
            NotificationPhase.COMPLETED, NotificationPhase.FAILED -> builder.setOngoing(false).setAutoCancel(true)
        }
        try {
            manager.notify(TAG, idOf(notification.kind), builder.build())
        } catch (e: RuntimeException) {
            // Revoked meanwhile, or refused by the system: sync goes on without it.
            Log.w(TAG, "sync notification not shown: $e")
        }
    }

    /** Removes every sync notification (the user signed out). */
    fun cancelAll() = NotificationKind.entries.forEach { manager.cancel(TAG, idOf(it)) }

    private fun allowed(): Boolean {
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU &&
            context.checkSelfPermission(Manifest.permission.POST_NOTIFICATIONS) != PackageManager.PERMISSION_GRANTED
        ) {
            return false
        }
        return manager.areNotificationsEnabled()
    }

    private fun launchIntent(): PendingIntent? {
        val intent = context.packageManager.getLaunchIntentForPackage(context.packageName) ?: return null
        return PendingIntent.getActivity(context, 0, intent, PendingIntent.FLAG_IMMUTABLE or PendingIntent.FLAG_UPDATE_CURRENT)
    }

    /** Calls that exist from API 26 only, kept apart so older devices never load them. */
    private object Api26 {
        fun createChannel(manager: NotificationManager, name: String) = manager.createNotificationChannel(
            NotificationChannel(CHANNEL_ID, name, NotificationManager.IMPORTANCE_LOW),
        )

        fun builder(context: Context): Notification.Builder = Notification.Builder(context, CHANNEL_ID)
    }

    companion object {
        /** The notification channel (Android 8+). */
        const val CHANNEL_ID = "fieldsync-sync"

        /** Tag of the sync notifications. */
        const val TAG = "fieldsync"

        private const val PROGRESS_MAX = 100

        /** The notification id of a kind. */
        fun idOf(kind: NotificationKind): Int = 0x5f5c_0100 + kind.ordinal
    }
}
