package dev.fieldsync

import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/**
 * Local queries and observed queries through the Kotlin facade, against a
 * real `fieldsync server` process and a real device file. Assertions are on
 * the sequence of emissions, never on durations; the timeouts only stop a
 * broken run.
 */
class QueryTest {
    private val server = TestServer.start()
    private val opened = mutableListOf<FieldSync>()
    private val background = CoroutineScope(SupervisorJob() + Dispatchers.Default)

    @AfterEach
    fun tearDown() {
        background.cancel()
        opened.forEach { it.close() }
        server.close()
    }

    private fun open(token: String): FieldSync =
        openBlocking(server.databasePath("query"), server.url, token).also { opened += it }

    private suspend fun Channel<List<Record>>.next(): List<Record> = withTimeout(60_000) { receive() }

    @Test
    fun `a query with a condition and an order returns what the condition selects on the device`() = runBlocking<Unit> {
        val tech = server.user("tech-a", "technician")
        server.seed(listOf("tech-a"), 30)
        val sync = open(tech)
        sync.syncNow()

        // The highest priority among the seeded rows, or a name ending in 5.
        val every = sync.list("work_orders", limit = 100_000)
        val top = every.mapNotNull { it.long("priority") }.max()
        val where = """{"op": "or", "filters": [{"op": "ge", "column": "priority", "value": $top}, {"op": "ends_with", "column": "name", "value": "5"}]}"""
        val order = listOf(QueryOrder("priority", descending = true), QueryOrder("name", descending = false))
        val got = sync.query("work_orders", where, order).map { it.id }

        // The same condition over every row of the device file, in Kotlin.
        val want = every
            .filter { r -> (r.long("priority") ?: Long.MIN_VALUE) >= top || (r.text("name")?.endsWith("5") ?: false) }
            .sortedWith(
                compareByDescending<Record> { it.long("priority") }
                    .thenBy { it.text("name") }
                    .thenBy { it.id },
            )
            .map { it.id }
        assertTrue(want.isNotEmpty())
        assertTrue(want.size < every.size, "the condition leaves rows out")
        assertEquals(want, got)
        assertEquals(want.size.toLong(), sync.count("work_orders", where))
        assertEquals(want.drop(2).take(3), sync.query("work_orders", where, order, limit = 3, offset = 2).map { it.id })

        assertThrows<FieldSyncException.InvalidInput> {
            runBlocking { sync.query("work_orders", """{"op": "eq", "column": "no_such", "value": 1}""") }
        }
    }

    @Test
    fun `an observed query re-emits after a local insert and a dispatcher's change, not after other tables`() = runBlocking<Unit> {
        val tech = server.user("tech-a", "technician")
        val dispatcher = server.user("disp", "dispatcher")
        server.seed(listOf("tech-a"), 20)
        val sync = open(tech)
        sync.syncNow()
        val wo = sync.list("work_orders", limit = 1).first().id
        val where = """{"op": "eq", "column": "work_order_id", "value": "$wo"}"""

        val emissions = Channel<List<Record>>(Channel.UNLIMITED)
        background.launch { sync.observe("work_order_service_tasks", where, listOf(QueryOrder("task_name", false))).collect { emissions.send(it) } }

        // At once: what the query selects now.
        val first = emissions.next()
        assertEquals(sync.query("work_order_service_tasks", where, listOf(QueryOrder("task_name", false))).map { it.id }, first.map { it.id })

        // A local insert into the observed table.
        sync.insert("work_order_service_tasks", "task-local-1", fieldsOf("work_order_id" to wo, "task_name" to "local task", "completed" to false))
        val afterInsert = emissions.next()
        assertTrue(afterInsert.any { it.id == "task-local-1" }, "the insert is in the next emission")

        // A write to another table, then a change to the observed one: the
        // next emission is the observed change.
        val booking = sync.list("bookings", limit = 1).first().id
        sync.update("bookings", booking, fieldsOf("notes" to "another table"))
        sync.update("work_order_service_tasks", "task-local-1", fieldsOf("task_name" to "renamed"))
        val afterUpdate = emissions.next()
        assertEquals("renamed", afterUpdate.first { it.id == "task-local-1" }.text("task_name"))

        // Upload, then a dispatcher's change arrives by sync.
        sync.syncNow()
        val task = first.firstOrNull()?.id ?: "task-local-1"
        server.dispatcherPut(dispatcher, "work_order_service_tasks", task, """{"task_name": "changed by dispatch"}""")
        sync.syncNow()
        withTimeout(60_000) {
            while (emissions.receive().firstOrNull { it.id == task }?.text("task_name") != "changed by dispatch") {
                // earlier emissions: the upload's results
            }
        }
    }
}
