package dev.fieldsync.android

import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import android.os.Build
import dev.fieldsync.FieldSync
import dev.fieldsync.NetworkType

/**
 * Reports the default network to the core on every change, through
 * ConnectivityManager's default-network callback: connected (internet access
 * the OS validated), metered (no NET_CAPABILITY_NOT_METERED) and the
 * transport. The core decides what follows (network check, Wi-Fi only).
 * Needs the ACCESS_NETWORK_STATE permission.
 */
internal class NetworkReporter(context: Context, private val fieldSync: FieldSync) {
    private val manager = context.systemService<ConnectivityManager>()

    private val callback = object : ConnectivityManager.NetworkCallback() {
        override fun onAvailable(network: Network) {
            // Before Android 8 a network may be announced without its capabilities.
            if (Build.VERSION.SDK_INT < Build.VERSION_CODES.O) manager.getNetworkCapabilities(network)?.let(::report)
        }

        override fun onCapabilitiesChanged(network: Network, capabilities: NetworkCapabilities) =
            report(capabilities)

        override fun onLost(network: Network) = reportDown()
    }

    /** Starts listening; the OS calls back at once with the current network. */
    fun start() {
        reportCurrent()
        manager.registerDefaultNetworkCallback(callback)
    }

    /** Stops listening. */
    fun stop() = manager.unregisterNetworkCallback(callback)

    /** Reports the default network now (a job starting in a fresh process). */
    fun reportCurrent() {
        val capabilities = manager.activeNetwork?.let { manager.getNetworkCapabilities(it) }
        if (capabilities == null) reportDown() else report(capabilities)
    }

    private fun reportDown() = fieldSync.setNetwork(connected = false, metered = false, type = NetworkType.NONE)

    private fun report(capabilities: NetworkCapabilities) = fieldSync.setNetwork(
        connected = capabilities.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET) &&
            capabilities.hasCapability(NetworkCapabilities.NET_CAPABILITY_VALIDATED),
        metered = !capabilities.hasCapability(NetworkCapabilities.NET_CAPABILITY_NOT_METERED),
        type = transportOf(capabilities),
    )

    private fun transportOf(capabilities: NetworkCapabilities): NetworkType = when {
        capabilities.hasTransport(NetworkCapabilities.TRANSPORT_WIFI) -> NetworkType.WIFI
        capabilities.hasTransport(NetworkCapabilities.TRANSPORT_CELLULAR) -> NetworkType.CELLULAR
        capabilities.hasTransport(NetworkCapabilities.TRANSPORT_ETHERNET) -> NetworkType.ETHERNET
        else -> NetworkType.OTHER
    }
}
