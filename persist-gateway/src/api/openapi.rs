//! The OpenAPI 3.0 document of the REST API, generated from the same
//! metadata the API serves: one schema per record type (fields with their
//! types, labels as `title`, help as `description`, bounds, enums,
//! defaults, secret fields `writeOnly`, the identity key `readOnly`), and
//! the paths of each type with their parameters and error answers.

use persist::{ColumnMeta, KeyKind, OnDelete, RecordMeta, SqlType};
use serde_json::{json, Map, Value as Json};

use super::json::to_json;

fn type_schema(c: &ColumnMeta) -> Map<String, Json> {
    let mut s = Map::new();
    let (ty, format) = match c.sql_type {
        SqlType::BigInt => ("integer", Some("int64")),
        SqlType::Integer => ("integer", Some("int32")),
        // The infinities travel as strings: see the api module.
        SqlType::Double => ("number", Some("double")),
        SqlType::Bool => ("boolean", None),
        SqlType::Text => ("string", None),
        SqlType::Blob => ("string", Some("byte")),
        SqlType::Timestamp => ("string", Some("date-time")),
    };
    s.insert("type".into(), ty.into());
    if let Some(f) = format {
        s.insert("format".into(), f.into());
    }
    if let Some(v) = c.variants {
        s.insert("enum".into(), json!(v));
    }
    s
}

fn field_schema(meta: &RecordMeta, i: usize) -> Json {
    let c = &meta.columns[i];
    let mut s = type_schema(c);
    if c.nullable {
        s.insert("nullable".into(), true.into());
        if let Some(Json::Array(v)) = s.get_mut("enum") {
            v.push(Json::Null);
        }
    }
    if let Some(l) = c.ui.label {
        s.insert("title".into(), l.into());
    }
    let mut description = c.ui.help.unwrap_or_default().to_owned();
    if let Some(r) = &c.reference {
        let target = (r.target)();
        let what = match r.on_delete {
            OnDelete::Cascade => "deleting it deletes this record",
            OnDelete::Restrict => "it cannot be deleted while this record references it",
        };
        // The module's own help says it better, when there is one.
        if description.is_empty() {
            description = format!("The key of a `{}` record ({what}).", target.table);
        }
        s.insert("x-references".into(), target.table.into());
    }
    if c.ui.multiline {
        s.insert("x-multiline".into(), true.into());
    }
    if c.ui.descriptive {
        s.insert("x-descriptive".into(), true.into());
    }
    if !description.is_empty() {
        s.insert("description".into(), description.into());
    }
    if let Some(m) = c.ui.min {
        s.insert("minimum".into(), json!(m));
    }
    if let Some(m) = c.ui.max {
        s.insert("maximum".into(), json!(m));
    }
    if let Some(d) = &c.default {
        s.insert("default".into(), to_json(d));
    }
    if c.ui.secret {
        s.insert("writeOnly".into(), true.into());
    }
    if i == meta.key && meta.key_kind == KeyKind::Identity {
        s.insert("readOnly".into(), true.into());
    }
    Json::Object(s)
}

fn record_schema(meta: &RecordMeta) -> Json {
    let properties: Map<String, Json> = (0..meta.columns.len())
        .map(|i| (meta.columns[i].field.to_owned(), field_schema(meta, i)))
        .collect();
    // What a create must give: not the identity key, not what has a
    // default or may be null.
    let required: Vec<&str> = meta
        .columns
        .iter()
        .enumerate()
        .filter(|(i, c)| {
            !c.nullable
                && c.default.is_none()
                && !(*i == meta.key && meta.key_kind == KeyKind::Identity)
        })
        .map(|(_, c)| c.field)
        .collect();
    let mut s = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
    });
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    if let Some(t) = meta.title {
        s["title"] = t.into();
    }
    // JSON objects have no order: the pages lay fields out in this one.
    let order: Vec<&str> = meta.columns.iter().map(|c| c.field).collect();
    s["x-fields"] = json!(order);
    s["x-key"] = meta.key_column().field.into();
    if let Some((_, c)) = meta.descriptive_column() {
        s["x-descriptive"] = c.field.into();
    }
    s
}

fn error_responses(codes: &[&str]) -> Map<String, Json> {
    codes
        .iter()
        .map(|code| {
            (
                (*code).to_owned(),
                json!({
                    "description": match *code {
                        "400" => "The request is malformed (`invalid_request`, with `fields`).",
                        "401" => "No API token, or not one of this node's.",
                        "403" => "A read-only token tried to write.",
                        "404" => "No such record type or record.",
                        "409" => "`unique_violation`, `referenced` or `not_master` (with `master_url`).",
                        "412" => "`stale`: the record changed since its ETag was read (`current_version`).",
                        "422" => "`validation` (the record's validator) or `missing_reference`.",
                        "428" => "If-Match is missing.",
                        _ => "The store is busy or did not answer in time.",
                    },
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }),
            )
        })
        .collect()
}

fn etag_header() -> Json {
    json!({
        "ETag": {
            "description": "The record's row version, for If-Match.",
            "schema": {"type": "string"}
        }
    })
}

fn paths(meta: &RecordMeta) -> (String, Json, String, Json) {
    let t = meta.table;
    let name = schema_name(meta);
    let r = json!({"$ref": format!("#/components/schemas/{name}")});
    let title = meta.title.unwrap_or(t);
    let mut params: Vec<Json> = vec![
        json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": super::MAX_LIMIT, "default": super::DEFAULT_LIMIT}}),
        json!({"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}),
        json!({"name": "order", "in": "query", "description": "Fields to order by, comma-separated; `-field` for descending. The key breaks ties.", "schema": {"type": "string"}}),
    ];
    for c in meta.columns.iter().filter(|c| !c.ui.secret) {
        let schema = Json::Object(type_schema(c));
        params.push(json!({"name": c.field, "in": "query", "description": format!("{} equals", c.field), "schema": schema}));
        for op in ["ne", "lt", "le", "gt", "ge"] {
            params.push(
                json!({"name": format!("{}.{op}", c.field), "in": "query", "schema": schema}),
            );
        }
        if c.nullable {
            params.push(json!({"name": format!("{}.null", c.field), "in": "query", "description": "true: only NULL; false: only not NULL", "schema": {"type": "boolean"}}));
        }
    }
    let mut list_errors = error_responses(&["400", "401", "404", "503"]);
    list_errors.insert(
        "200".into(),
        json!({
            "description": format!("{title}, one page"),
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["type", "items", "versions", "total", "offset", "limit"],
                "properties": {
                    "type": {"type": "string"},
                    "items": {"type": "array", "items": r},
                    "versions": {"type": "array", "items": {"type": "string"}, "description": "The row version (ETag without quotes) of each item"},
                    "total": {"type": "integer", "description": "Rows matching the filters"},
                    "offset": {"type": "integer"},
                    "limit": {"type": "integer"}
                }
            }}}
        }),
    );
    let mut create = error_responses(&["400", "401", "403", "404", "409", "422", "503"]);
    create.insert(
        "201".into(),
        json!({
            "description": "Created",
            "headers": etag_header(),
            "content": {"application/json": {"schema": r}}
        }),
    );
    let collection = json!({
        "get": {
            "operationId": format!("list_{t}"),
            "summary": format!("List {title}"),
            "tags": [t],
            "parameters": params,
            "responses": list_errors,
        },
        "post": {
            "operationId": format!("create_{t}"),
            "summary": format!("Create one of {title}"),
            "tags": [t],
            "requestBody": {"required": true, "content": {"application/json": {"schema": r}}},
            "responses": create,
        }
    });
    let key = meta.key_column();
    let key_param = json!({"name": "key", "in": "path", "required": true, "schema": Json::Object(type_schema(key))});
    let if_match = json!({"name": "If-Match", "in": "header", "required": true, "description": "The ETag as read, or `*`", "schema": {"type": "string"}});
    let mut get_one = error_responses(&["401", "404", "503"]);
    get_one.insert(
        "200".into(),
        json!({"description": "The record", "headers": etag_header(), "content": {"application/json": {"schema": r}}}),
    );
    let mut put = error_responses(&[
        "400", "401", "403", "404", "409", "412", "422", "428", "503",
    ]);
    put.insert(
        "200".into(),
        json!({"description": "Replaced", "headers": etag_header(), "content": {"application/json": {"schema": r}}}),
    );
    let mut delete = error_responses(&["400", "401", "403", "404", "409", "412", "428", "503"]);
    delete.insert(
        "204".into(),
        json!({"description": "Deleted (and what cascades with it)"}),
    );
    let item = json!({
        "parameters": [key_param],
        "get": {"operationId": format!("get_{t}"), "summary": format!("One of {title}"), "tags": [t], "responses": get_one},
        "put": {
            "operationId": format!("replace_{t}"),
            "summary": format!("Replace one of {title} (secret fields left out keep their value)"),
            "tags": [t],
            "parameters": [if_match],
            "requestBody": {"required": true, "content": {"application/json": {"schema": r}}},
            "responses": put,
        },
        "delete": {
            "operationId": format!("delete_{t}"),
            "summary": format!("Delete one of {title}"),
            "tags": [t],
            "parameters": [if_match],
            "responses": delete,
        }
    });
    (
        format!("/api/v1/records/{t}"),
        collection,
        format!("/api/v1/records/{t}/{{key}}"),
        item,
    )
}

/// The component name of a record type's schema.
fn schema_name(meta: &RecordMeta) -> String {
    format!("{}_{}", meta.type_name, meta.table)
}

/// The document for a node serving `metas`.
pub(crate) fn document(node_id: &str, metas: &[&'static RecordMeta]) -> Json {
    let mut paths_obj = Map::new();
    let mut schemas = Map::new();
    for m in metas {
        let (p1, v1, p2, v2) = paths(m);
        paths_obj.insert(p1, v1);
        paths_obj.insert(p2, v2);
        schemas.insert(schema_name(m), record_schema(m));
    }
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["kind", "message"],
                "properties": {
                    "kind": {"type": "string", "enum": [
                        "unique_violation", "validation", "missing_reference", "referenced",
                        "not_master", "stale", "precondition_required", "not_found",
                        "unknown_type", "invalid_request", "unauthorized", "forbidden",
                        "busy", "timeout", "unavailable", "internal"
                    ]},
                    "message": {"type": "string"},
                    "table": {"type": "string"},
                    "column": {"type": "string"},
                    "field": {"type": "string", "nullable": true},
                    "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                    "master_url": {"type": "string", "nullable": true},
                    "active_node": {"type": "string", "nullable": true},
                    "current_version": {"type": "string", "nullable": true}
                },
                "additionalProperties": true
            }}
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": format!("persist gateway {node_id}: configuration records"),
            "version": "1",
            "description": "Every record type of the node's modules, from their derive metadata."
        },
        "security": [{"apiToken": []}],
        "paths": paths_obj,
        "components": {
            "securitySchemes": {"apiToken": {"type": "http", "scheme": "bearer", "description": "An [[api.token]] of the gateway's config"}},
            "schemas": schemas
        }
    })
}
