package dev.fieldsync.android

import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import dev.fieldsync.platform.AppLifecycle
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow

/** [AppLifecycle] from ProcessLifecycleOwner: foreground between onStart and onStop of the app. Create on the main thread. */
class ProcessAppLifecycle : AppLifecycle, DefaultLifecycleObserver {
    private val current = MutableStateFlow(false)
    override val foreground: StateFlow<Boolean> = current

    init {
        ProcessLifecycleOwner.get().lifecycle.addObserver(this)
    }

    override fun onStart(owner: LifecycleOwner) {
        current.value = true
    }

    override fun onStop(owner: LifecycleOwner) {
        current.value = false
    }
}
