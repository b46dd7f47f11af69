//! What a record type is: its metadata, its row codec, and typed column handles.
//!
//! Module authors never implement these by hand: `#[derive(PersistentRecord)]`
//! generates them. They are public so the generated code (and tools such as
//! the sync worker) can use them.

use std::fmt;
use std::marker::PhantomData;

use crate::error::DecodeError;
use crate::value::{FieldType, SqlType, Value};

/// What happens to referencing rows when the referenced record is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnDelete {
    /// Refuse the delete while any row references the record (the default).
    Restrict,
    /// Delete the referencing rows too, each captured in the log and announced to listeners.
    Cascade,
}

/// A reference column's link to another record type's key.
#[derive(Clone, Copy)]
pub struct Reference {
    /// The referenced record type's metadata.
    pub target: fn() -> &'static RecordMeta,
    /// Behaviour when the referenced record is deleted.
    pub on_delete: OnDelete,
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reference")
            .field("target", &(self.target)().table)
            .field("on_delete", &self.on_delete)
            .finish()
    }
}

/// One column of a record type.
#[derive(Debug, Clone)]
pub struct ColumnMeta {
    /// Column name in the database.
    pub name: &'static str,
    /// Rust field name.
    pub field: &'static str,
    /// Column type.
    pub sql_type: SqlType,
    /// Whether NULL is allowed (the field is an `Option`).
    pub nullable: bool,
    /// Whether the column has a unique index.
    pub unique: bool,
    /// Whether the column has a (non-unique) index.
    pub indexed: bool,
    /// Default value: used for rows that exist when the column is added to a table.
    pub default: Option<Value>,
    /// The record type this column references, if any.
    pub reference: Option<Reference>,
    /// For enums stored by name: the variant names.
    pub variants: Option<&'static [&'static str]>,
    /// How pages and the REST API present the column (labels, help, secret...).
    /// Presentation only: not part of [`RecordMeta::canonical`], so changing it
    /// never changes the schema fingerprint.
    pub ui: ColumnUi,
}

/// How a column is presented: what `#[persist(label, help, descriptive,
/// secret, multiline, min, max)]` declared. None of it is stored schema.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ColumnUi {
    /// The field's label (`label = "..."`); pages fall back to the field name.
    pub label: Option<&'static str>,
    /// A sentence of help shown beside the input (`help = "..."`).
    pub help: Option<&'static str>,
    /// The column names a row where rows are offered as choices (a
    /// reference's select); at most one per record type.
    pub descriptive: bool,
    /// The value is never sent back to a browser or API client (a password).
    pub secret: bool,
    /// Text edited over several lines.
    pub multiline: bool,
    /// The smallest value accepted (numbers; checked by the record's
    /// validation before the record's own validator runs).
    pub min: Option<f64>,
    /// The largest value accepted (numbers; checked like `min`).
    pub max: Option<f64>,
}

impl ColumnUi {
    /// No presentation declared.
    pub const NONE: ColumnUi = ColumnUi {
        label: None,
        help: None,
        descriptive: false,
        secret: false,
        multiline: false,
        min: None,
        max: None,
    };
}

/// How the primary key is assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// An `i64` the store assigns on insert (the value in the struct is ignored).
    Identity,
    /// A key the module supplies (e.g. the id of the profile a settings row belongs to).
    Explicit,
}

/// Decodes a row image into its record and validates it; the validator's
/// message (or the decode error's) on failure. See [`RecordMeta::check_row`].
pub type CheckRow = fn(Vec<Value>) -> Result<(), String>;

/// Everything the store needs to know about a record type.
#[derive(Debug, Clone)]
pub struct RecordMeta {
    /// Rust type name, for error messages.
    pub type_name: &'static str,
    /// Table name.
    pub table: &'static str,
    /// Columns, in field order; row images follow this order.
    pub columns: Vec<ColumnMeta>,
    /// Index of the primary key column in `columns`.
    pub key: usize,
    /// How the key is assigned.
    pub key_kind: KeyKind,
    /// What pages call the record type (`#[persist(title = "...")]`).
    /// Presentation only, like [`ColumnMeta::ui`].
    pub title: Option<&'static str>,
    /// Decodes a row image into the record and runs its validation (bounds,
    /// then the validator): what [`WriteTx::insert`](crate::WriteTx::insert)
    /// checks, for callers that hold rows rather than the Rust type (the
    /// gateway's REST API). `None` for hand-written metadata without one.
    pub check_row: Option<CheckRow>,
}

impl RecordMeta {
    /// The primary key column.
    pub fn key_column(&self) -> &ColumnMeta {
        &self.columns[self.key]
    }

    /// The descriptive column (`#[persist(descriptive)]`), if one is declared.
    pub fn descriptive_column(&self) -> Option<(usize, &ColumnMeta)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.ui.descriptive)
    }

    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<(usize, &ColumnMeta)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
    }

    /// A canonical, stable text form of the table definition: the input of the
    /// schema fingerprint and what the store records to detect changes.
    pub fn canonical(&self) -> String {
        let mut s = format!(
            "table {} key {} {:?}\n",
            self.table,
            self.key_column().name,
            self.key_kind
        );
        for c in &self.columns {
            s.push_str(&canonical_column(c));
            s.push('\n');
        }
        s
    }
}

/// The canonical text of one column (see [`RecordMeta::canonical`]).
pub fn canonical_column(c: &ColumnMeta) -> String {
    let mut s = format!(
        "column {} {}{}{}{}",
        c.name,
        c.sql_type.name(),
        if c.nullable { " null" } else { " not-null" },
        if c.unique { " unique" } else { "" },
        if c.indexed { " indexed" } else { "" },
    );
    if let Some(d) = &c.default {
        s.push_str(&format!(" default={d:?}"));
    }
    if let Some(r) = &c.reference {
        s.push_str(&format!(
            " references={} on-delete={:?}",
            (r.target)().table,
            r.on_delete
        ));
    }
    if let Some(v) = c.variants {
        s.push_str(&format!(" variants={v:?}"));
    }
    s
}

/// A struct stored as a table row. Derive it with `#[derive(PersistentRecord)]`.
pub trait PersistentRecord: Sized + Send + 'static {
    /// The primary key's type.
    type Key: FieldType + Clone + fmt::Debug + Send + 'static;
    /// Typed handles of the columns, for filters and ordering (see [`PersistentRecord::columns`]).
    type Columns;

    /// The record type's metadata.
    fn meta() -> &'static RecordMeta;

    /// Typed column handles: `Device::columns().port.gt(1024)`.
    fn columns() -> Self::Columns;

    /// The row image: one value per column, in column order.
    fn to_row(&self) -> Vec<Value>;

    /// Rebuilds a record from a row image.
    fn from_row(row: Vec<Value>) -> Result<Self, DecodeError>;

    /// The record's key.
    fn key(&self) -> Self::Key;

    /// Runs the record's validator (`#[persist(validate = path)]`); `Ok` when none is declared.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Takes the next value of a row image; used by generated `from_row` code.
#[doc(hidden)]
pub fn next_value(
    it: &mut std::vec::IntoIter<Value>,
    expected: usize,
    found: usize,
) -> Result<Value, DecodeError> {
    it.next()
        .ok_or(DecodeError::ColumnCount { expected, found })
}

/// A typed handle to one column of record type `R`, whose field has type `T`.
pub struct Column<R, T> {
    index: usize,
    name: &'static str,
    _marker: PhantomData<fn() -> (R, T)>,
}

impl<R, T> Clone for Column<R, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R, T> Copy for Column<R, T> {}

impl<R, T> fmt::Debug for Column<R, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Column({})", self.name)
    }
}

/// A comparison operator of a [`Filter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=` (`IS NULL` for a null operand).
    Eq,
    /// `<>` (`IS NOT NULL` for a null operand).
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CompareOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "<>",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }
}

/// A condition on one column of record type `R`; several filters are combined with AND.
pub struct Filter<R> {
    pub(crate) column: usize,
    pub(crate) op: CompareOp,
    pub(crate) value: Value,
    _marker: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Filter<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Filter(column {} {:?} {:?})",
            self.column, self.op, self.value
        )
    }
}

/// An ordering on one column of record type `R`.
pub struct Order<R> {
    pub(crate) column: usize,
    pub(crate) descending: bool,
    _marker: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Order<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Order(column {} {})",
            self.column,
            if self.descending { "desc" } else { "asc" }
        )
    }
}

impl<R, T: FieldType> Column<R, T> {
    /// Creates a handle; called by generated code.
    #[doc(hidden)]
    pub const fn new(index: usize, name: &'static str) -> Self {
        Column {
            index,
            name,
            _marker: PhantomData,
        }
    }

    /// The column's name in the database.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn filter(&self, op: CompareOp, value: &T) -> Filter<R> {
        Filter {
            column: self.index,
            op,
            value: value.to_value(),
            _marker: PhantomData,
        }
    }

    /// `column = value` (`IS NULL` when `value` is `None`).
    pub fn eq(&self, value: impl Into<T>) -> Filter<R> {
        self.filter(CompareOp::Eq, &value.into())
    }
    /// `column <> value` (`IS NOT NULL` when `value` is `None`).
    pub fn ne(&self, value: impl Into<T>) -> Filter<R> {
        self.filter(CompareOp::Ne, &value.into())
    }
    /// `column < value`
    pub fn lt(&self, value: impl Into<T>) -> Filter<R> {
        self.filter(CompareOp::Lt, &value.into())
    }
    /// `column <= value`
    pub fn le(&self, value: impl Into<T>) -> Filter<R> {
        self.filter(CompareOp::Le, &value.into())
    }
    /// `column > value`
    pub fn gt(&self, value: impl Into<T>) -> Filter<R> {
        self.filter(CompareOp::Gt, &value.into())
    }
    /// `column >= value`
    pub fn ge(&self, value: impl Into<T>) -> Filter<R> {
        self.filter(CompareOp::Ge, &value.into())
    }
    /// Ascending order on this column.
    pub fn asc(&self) -> Order<R> {
        Order {
            column: self.index,
            descending: false,
            _marker: PhantomData,
        }
    }
    /// Descending order on this column.
    pub fn desc(&self) -> Order<R> {
        Order {
            column: self.index,
            descending: true,
            _marker: PhantomData,
        }
    }
}

impl<R, T: FieldType> Column<R, Option<T>> {
    /// `column IS NULL`
    pub fn is_null(&self) -> Filter<R> {
        self.filter(CompareOp::Eq, &None)
    }
    /// `column IS NOT NULL`
    pub fn is_not_null(&self) -> Filter<R> {
        self.filter(CompareOp::Ne, &None)
    }
}
