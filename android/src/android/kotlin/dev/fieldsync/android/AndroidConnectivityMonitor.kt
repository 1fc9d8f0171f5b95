package dev.fieldsync.android

import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import dev.fieldsync.platform.ConnectivityMonitor
import dev.fieldsync.platform.NetworkState
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow

/**
 * [ConnectivityMonitor] over ConnectivityManager's default-network callback:
 * up when the default network has validated internet access, metered unless
 * it has NET_CAPABILITY_NOT_METERED (Wi-Fi usually has it, mobile data not).
 * Needs the ACCESS_NETWORK_STATE permission.
 */
class AndroidConnectivityMonitor(context: Context) : ConnectivityMonitor {
    private val manager = context.getSystemService(ConnectivityManager::class.java)
    private val current = MutableStateFlow(NetworkState.DOWN)
    override val state: StateFlow<NetworkState> = current

    private val callback = object : ConnectivityManager.NetworkCallback() {
        override fun onCapabilitiesChanged(network: Network, caps: NetworkCapabilities) {
            current.value = NetworkState(
                up = caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET) &&
                    caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_VALIDATED),
                metered = !caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_NOT_METERED),
                type = when {
                    caps.hasTransport(NetworkCapabilities.TRANSPORT_WIFI) -> dev.fieldsync.NetworkType.WIFI
                    caps.hasTransport(NetworkCapabilities.TRANSPORT_CELLULAR) -> dev.fieldsync.NetworkType.CELLULAR
                    caps.hasTransport(NetworkCapabilities.TRANSPORT_ETHERNET) -> dev.fieldsync.NetworkType.ETHERNET
                    else -> dev.fieldsync.NetworkType.OTHER
                },
            )
        }

        override fun onLost(network: Network) {
            current.value = NetworkState.DOWN
        }
    }

    init {
        manager.registerDefaultNetworkCallback(callback)
    }

    /** Stops listening to the OS. */
    fun stop() = manager.unregisterNetworkCallback(callback)
}
