/// The store's tables, as versioned migrations: each entry is applied once, in order, in one
/// transaction, and recorded (GRDB's migrator on SQLite, `lqx_schema` on PostgreSQL). Never edit
/// an entry that has shipped; append a new one.
enum Schema {
    /// `integer` and `serial` differ between the two databases; the rest is the same SQL.
    static func migrations(integer: String, serial: String) -> [(name: String, statements: [String])] {
        [
            (
                "v1-objects-events-audit",
                [
                    "CREATE TABLE lqx_revision (id INTEGER PRIMARY KEY CHECK (id = 1), value \(integer) NOT NULL)",
                    "INSERT INTO lqx_revision (id, value) VALUES (1, 0)",
                    """
                    CREATE TABLE lqx_objects (kind TEXT NOT NULL, id TEXT NOT NULL, project TEXT NOT NULL,
                    name TEXT NOT NULL, version \(integer) NOT NULL, node TEXT NOT NULL, cpus \(integer) NOT NULL,
                    memory_mib \(integer) NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, id))
                    """,
                    "CREATE UNIQUE INDEX lqx_objects_name ON lqx_objects (kind, project, name)",
                    "CREATE INDEX lqx_objects_node ON lqx_objects (node) WHERE node <> ''",
                    """
                    CREATE TABLE lqx_events (seq \(serial), revision \(integer) NOT NULL, time_ms \(integer) NOT NULL,
                    kind TEXT NOT NULL, object_id TEXT NOT NULL, object_name TEXT NOT NULL, project TEXT NOT NULL,
                    type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL)
                    """,
                    "CREATE INDEX lqx_events_object ON lqx_events (object_id, seq)",
                    """
                    CREATE TABLE lqx_audit (seq \(serial), revision \(integer) NOT NULL, time_ms \(integer) NOT NULL,
                    user_name TEXT NOT NULL, project TEXT NOT NULL, vm TEXT NOT NULL, action TEXT NOT NULL,
                    detail TEXT NOT NULL, result TEXT NOT NULL)
                    """,
                    "CREATE INDEX lqx_audit_vm ON lqx_audit (vm, seq)",
                ]
            )
        ]
    }
}
