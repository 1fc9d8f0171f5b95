package dev.fieldsync.android

import android.app.NotificationChannel
import android.app.NotificationManager
import android.content.Context
import androidx.core.app.NotificationCompat
import androidx.core.app.NotificationManagerCompat
import dev.fieldsync.NotificationPhase
import dev.fieldsync.SyncEvent
import dev.fieldsync.platform.SyncNotificationPresenter

/**
 * [SyncNotificationPresenter] with a low-importance notification channel:
 * the core's message with a progress bar while running, then its completion
 * or failure.
 * Needs POST_NOTIFICATIONS on Android 13+; without it nothing is shown.
 */
class AndroidSyncNotificationPresenter(
    private val context: Context,
    private val smallIcon: Int,
    private val channelName: String = "Sync",
) : SyncNotificationPresenter {
    private val manager = NotificationManagerCompat.from(context)

    init {
        context.getSystemService(NotificationManager::class.java)
            .createNotificationChannel(NotificationChannel(CHANNEL, channelName, NotificationManager.IMPORTANCE_LOW))
    }

    override fun show(notification: SyncEvent.Notification) {
        if (!manager.areNotificationsEnabled()) return
        val builder = NotificationCompat.Builder(context, CHANNEL).setSmallIcon(smallIcon).setOnlyAlertOnce(true)
            .setContentTitle(notification.message)
        when (notification.phase) {
            NotificationPhase.PROGRESS -> {
                builder.setOngoing(true)
                // The core's fraction: it never goes back within a sync.
                val fraction = notification.fraction
                if (fraction != null) {
                    builder.setProgress(1000, (fraction * 1000).toInt().coerceIn(0, 1000), false)
                } else {
                    builder.setProgress(0, 0, true)
                }
            }
            NotificationPhase.COMPLETED, NotificationPhase.FAILED -> builder.setOngoing(false)
        }
        try {
            manager.notify(NOTIFICATION_ID, builder.build())
        } catch (e: SecurityException) {
            // POST_NOTIFICATIONS was revoked: sync goes on without a notification.
        }
    }

    override fun dismiss() = manager.cancel(NOTIFICATION_ID)

    private companion object {
        const val CHANNEL = "fieldsync-sync"
        const val NOTIFICATION_ID = 0x5f5c
    }
}
