package dev.fieldsync

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/**
 * Transactions through the Kotlin facade against a real `fieldsync server`
 * process: two writes land on the server together, a refused one takes the
 * other down with it, and a failing write undoes the writes before it on
 * the device.
 */
class TransactionTest {
    private val server = TestServer.start()
    private val opened = mutableListOf<FieldSync>()

    @AfterEach
    fun tearDown() {
        opened.forEach { it.close() }
        server.close()
    }

    private fun open(token: String): FieldSync =
        openBlocking(server.databasePath("tx"), server.url, token).also { opened += it }

    @Test
    fun `a transaction of two writes lands on the server together`() = runBlocking<Unit> {
        val tech = server.user("tech-a", "technician")
        val dispatcher = server.user("disp", "dispatcher")
        server.seed(listOf("tech-a"), 10)
        val sync = open(tech)
        sync.syncNow()
        val wo = sync.list("work_orders", limit = 1).first().id
        val booking = sync.list("bookings", limit = 1).first().id

        val records = sync.transaction {
            insert("work_order_service_tasks", "kt-task-1", "work_order_id" to wo, "task_name" to "Check filter")
            update("bookings", booking, "notes" to "Filter checked")
        }
        assertEquals(listOf("kt-task-1", booking), records.map { it?.id })
        assertEquals(2L, sync.pendingUploads())
        // Nothing on the server before the sync.
        assertThrows<IllegalStateException> { server.record(dispatcher, "work_order_service_tasks", "kt-task-1") }

        val report = sync.syncNow()
        assertEquals(2L, report.uploaded)
        assertTrue(server.record(dispatcher, "work_order_service_tasks", "kt-task-1").contains("Check filter"))
        assertTrue(server.record(dispatcher, "bookings", booking).contains("Filter checked"))
        assertEquals(0L, sync.pendingUploads())
    }

    @Test
    fun `a write the server refuses takes the whole transaction down, and a local failure keeps nothing`() = runBlocking<Unit> {
        val tech = server.user("tech-a", "technician")
        val dispatcher = server.user("disp", "dispatcher")
        server.seed(listOf("tech-a", "tech-b"), 20)
        val sync = open(tech)
        sync.syncNow()
        val booking = sync.list("bookings", limit = 1).first().id
        val before = server.record(dispatcher, "bookings", booking)
        // A task for a work order tech-a does not reach: the server refuses it.
        val foreign = (0 until 20).map { "wo-%07d".format(it) }.first { id ->
            try {
                sync.get("work_orders", id)
                false
            } catch (e: FieldSyncException.RecordNotFound) {
                true
            }
        }

        sync.transaction {
            update("bookings", booking, "notes" to "must not land")
            insert("work_order_service_tasks", "kt-task-2", "work_order_id" to foreign, "task_name" to "out of scope")
        }
        val report = sync.syncNow()
        assertEquals(0L, report.uploaded)
        assertEquals(setOf(booking, "kt-task-2"), report.rejected.map { it.recordId }.toSet())
        assertEquals(before, server.record(dispatcher, "bookings", booking))
        assertThrows<IllegalStateException> { server.record(dispatcher, "work_order_service_tasks", "kt-task-2") }
        assertFalse(sync.get("bookings", booking).text("notes") == "must not land")
        assertThrows<FieldSyncException.RecordNotFound> { runBlocking { sync.get("work_order_service_tasks", "kt-task-2") } }

        // On the device: the second write fails, the first is not kept.
        assertThrows<FieldSyncException.RecordNotFound> {
            runBlocking {
                sync.transaction {
                    put("bookings", booking, "notes" to "kept?")
                    update("bookings", "no-such-booking", "notes" to "x")
                }
            }
        }
        assertFalse(sync.get("bookings", booking).text("notes") == "kept?")
        assertEquals(0L, sync.pendingUploads())
        assertNull(sync.transaction { delete("bookings", booking) }.single())
    }
}
