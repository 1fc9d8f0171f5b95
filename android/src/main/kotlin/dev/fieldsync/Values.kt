package dev.fieldsync

/*
 * Conversions between plain Kotlin values and the generated [Value] and
 * [Record] types, so app code can write `fieldsOf("notes" to "done", "minutes" to 30)`
 * and read `record.text("notes")`.
 */

/**
 * The [Value] of a plain Kotlin value: null, Boolean, Int, Long, Float, Double,
 * String, or a [Value] as it is. Dates are text (`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ`).
 *
 * @throws IllegalArgumentException for any other type.
 */
fun valueOf(any: Any?): Value = when (any) {
    null -> Value.Null
    is Value -> any
    is Boolean -> Value.Boolean(any)
    is Int -> Value.Integer(any.toLong())
    is Long -> Value.Integer(any)
    is Short -> Value.Integer(any.toLong())
    is Float -> Value.Real(any.toDouble())
    is Double -> Value.Real(any)
    is String -> Value.Text(any)
    else -> throw IllegalArgumentException("a field value is null, Boolean, a number or String, not ${any::class.qualifiedName}")
}

/** The plain Kotlin value of this [Value]: null, Long, Double, String or Boolean. */
fun Value.toAny(): Any? = when (this) {
    is Value.Null -> null
    is Value.Integer -> value
    is Value.Real -> value
    is Value.Text -> value
    is Value.Boolean -> value
}

/** A field map from `name to value` pairs of plain Kotlin values. */
fun fieldsOf(vararg fields: Pair<String, Any?>): Map<String, Value> =
    fields.associate { (name, value) -> name to valueOf(value) }

/** The plain value of field [name], or null when it is null or absent. */
operator fun Record.get(name: String): Any? = fields[name]?.toAny()

/** Field [name] as text, or null. */
fun Record.text(name: String): String? = (fields[name] as? Value.Text)?.value

/** Field [name] as a whole number, or null. */
fun Record.long(name: String): Long? = (fields[name] as? Value.Integer)?.value

/** Field [name] as a number, or null. */
fun Record.double(name: String): Double? = when (val v = fields[name]) {
    is Value.Real -> v.value
    is Value.Integer -> v.value.toDouble()
    else -> null
}

/** Field [name] as a flag, or null. */
fun Record.boolean(name: String): Boolean? = (fields[name] as? Value.Boolean)?.value
