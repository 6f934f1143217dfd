//! ObjectStack object metadata: the objects, fields, field types and indexes a deploy bundle
//! carries (upstream `data/object.zod.ts`, `data/field.zod.ts`).
//!
//! Everything the schema engine, the registry and the UI-facing defaults depend on is typed, with
//! upstream's defaults. A few nested configurations that the fleet never interprets — a field's
//! `fileAttachmentConfig`, `encryptionConfig`, `maskingRule`, an object's `validations`,
//! `stateMachines` and `actions` — are carried as opaque JSON: they are kept and passed through
//! unchanged, but not validated here and their inner defaults are not filled in.
//!
//! One fleet extension: `renamedFrom` on an object or a field names what it was called before,
//! making a rename explicit (upstream would strip the key; the fleet keeps it).
//!
//! Upstream 4.0.1 publishes no JSON Schema for `Object` (only its Zod runtime); `Field`,
//! `FieldType`, `Index` and `SelectOption` have one.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{FieldName, MACHINE_NAME_PATTERN, ObjectName};
use crate::validate::{Checks, Spec};
use crate::wire::{default_true, present};

/// An ObjectStack field type (upstream `FieldType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Single-line text.
    Text,
    /// Multi-line text.
    Textarea,
    /// E-mail address.
    Email,
    /// Web address (TEXT column).
    Url,
    /// Phone number.
    Phone,
    /// Password (stored hashed by the application).
    Password,
    /// Markdown text.
    Markdown,
    /// HTML text.
    Html,
    /// Rich text.
    Richtext,
    /// Plain number (REAL column; `precision` and `scale` give its digits).
    Number,
    /// Money amount.
    Currency,
    /// Percentage (REAL column).
    Percent,
    /// Calendar date.
    Date,
    /// Date and time.
    Datetime,
    /// Time of day.
    Time,
    /// Boolean (checkbox).
    Boolean,
    /// Boolean (toggle switch).
    Toggle,
    /// Single select from options.
    Select,
    /// Multiple select from options (stored as JSON).
    Multiselect,
    /// Radio group.
    Radio,
    /// Checkbox group.
    Checkboxes,
    /// Reference to another object's record.
    Lookup,
    /// Owning reference to a master record.
    MasterDetail,
    /// Hierarchical reference.
    Tree,
    /// Image attachment (TEXT column; configured by the opaque `fileAttachmentConfig`).
    Image,
    /// File attachment (TEXT column; configured by the opaque `fileAttachmentConfig`).
    File,
    /// Avatar image.
    Avatar,
    /// Video attachment (TEXT column).
    Video,
    /// Audio attachment (TEXT column).
    Audio,
    /// Computed formula (no column).
    Formula,
    /// Roll-up summary (no column).
    Summary,
    /// Auto-number.
    Autonumber,
    /// GPS coordinates.
    Location,
    /// Structured address.
    Address,
    /// Source code.
    Code,
    /// Structured JSON.
    Json,
    /// Colour value in the field's `colorFormat` (TEXT column).
    Color,
    /// Star rating.
    Rating,
    /// Numeric slider.
    Slider,
    /// Digital signature.
    Signature,
    /// QR code / barcode.
    Qrcode,
    /// Progress bar.
    Progress,
    /// Tag list (stored as JSON).
    Tags,
    /// Vector embedding.
    Vector,
}

impl Spec for FieldType {
    const SPEC_NAME: &'static str = "FieldType";
}

impl Spec for SelectOption {
    const SPEC_NAME: &'static str = "SelectOption";
}

impl FieldType {
    /// Every field type, in upstream order.
    pub const ALL: [FieldType; 44] = [
        Self::Text,
        Self::Textarea,
        Self::Email,
        Self::Url,
        Self::Phone,
        Self::Password,
        Self::Markdown,
        Self::Html,
        Self::Richtext,
        Self::Number,
        Self::Currency,
        Self::Percent,
        Self::Date,
        Self::Datetime,
        Self::Time,
        Self::Boolean,
        Self::Toggle,
        Self::Select,
        Self::Multiselect,
        Self::Radio,
        Self::Checkboxes,
        Self::Lookup,
        Self::MasterDetail,
        Self::Tree,
        Self::Image,
        Self::File,
        Self::Avatar,
        Self::Video,
        Self::Audio,
        Self::Formula,
        Self::Summary,
        Self::Autonumber,
        Self::Location,
        Self::Address,
        Self::Code,
        Self::Json,
        Self::Color,
        Self::Rating,
        Self::Slider,
        Self::Signature,
        Self::Qrcode,
        Self::Progress,
        Self::Tags,
        Self::Vector,
    ];

    /// Whether the field references another object's record (a foreign key).
    pub fn is_reference(self) -> bool {
        matches!(self, Self::Lookup | Self::MasterDetail | Self::Tree)
    }

    /// Whether values are computed and never stored in a column.
    pub fn is_computed(self) -> bool {
        matches!(self, Self::Formula | Self::Summary)
    }
}

/// What happens to referencing records when the referenced record is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeleteBehavior {
    /// Set the reference to NULL.
    #[default]
    SetNull,
    /// Delete the referencing records too.
    Cascade,
    /// Refuse the delete while references exist.
    Restrict,
}

/// One option of a select-like field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelectOption {
    /// Display label (human-readable, any case allowed).
    pub label: String,
    /// Stored value (lowercase machine identifier).
    #[schemars(length(min = 2), regex(pattern = r"^[a-z][a-z0-9_.]*$"))]
    pub value: String,
    /// Colour code for badges/charts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// Whether this option is the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
}

/// Currency configuration of a `currency` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrencyConfig {
    /// Decimal precision (default 2).
    #[serde(default = "default_currency_precision")]
    #[schemars(range(min = 0, max = 10))]
    pub precision: u8,
    /// Dynamic (user selectable) or fixed (single) currency.
    #[serde(default)]
    pub currency_mode: CurrencyMode,
    /// Default or fixed currency code (ISO 4217).
    #[serde(default = "default_currency")]
    #[schemars(length(equal = 3))]
    pub default_currency: String,
}

fn default_currency_precision() -> u8 {
    2
}
fn default_currency() -> String {
    "CNY".to_owned()
}

/// Currency mode of a currency field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CurrencyMode {
    /// The user picks the currency per value.
    #[default]
    Dynamic,
    /// One fixed currency.
    Fixed,
}

/// Vector embedding configuration of a `vector` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VectorConfig {
    /// Dimensionality (1–10000).
    #[schemars(range(min = 1, max = 10000))]
    pub dimensions: u32,
    /// Similarity metric.
    #[serde(default)]
    pub distance_metric: DistanceMetric,
    /// Whether vectors are unit length.
    #[serde(default)]
    pub normalized: bool,
    /// Whether to build a vector index.
    #[serde(default = "default_true")]
    pub indexed: bool,
    /// Index algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_type: Option<VectorIndexType>,
}

/// Distance metric of a vector field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DistanceMetric {
    /// Cosine similarity.
    #[default]
    #[serde(rename = "cosine")]
    Cosine,
    /// Euclidean distance.
    #[serde(rename = "euclidean")]
    Euclidean,
    /// Dot product.
    #[serde(rename = "dotProduct")]
    DotProduct,
    /// Manhattan distance.
    #[serde(rename = "manhattan")]
    Manhattan,
}

/// Vector index algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VectorIndexType {
    /// HNSW graph.
    Hnsw,
    /// IVF flat.
    Ivfflat,
    /// Brute force.
    Flat,
}

/// Roll-up definition of a `summary` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SummaryOperations {
    /// Child object to aggregate.
    pub object: String,
    /// Field of the child object.
    pub field: String,
    /// Aggregation function.
    pub function: SummaryFunction,
}

/// Aggregation function of a roll-up summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SummaryFunction {
    /// Count of child records.
    Count,
    /// Sum of the child field's values.
    Sum,
    /// Smallest of the child field's values.
    Min,
    /// Largest of the child field's values.
    Max,
    /// Mean of the child field's values.
    Avg,
}

/// An ObjectStack field definition (upstream `Field`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Field {
    /// Machine name (snake_case); the key in the object's `fields` map is authoritative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<FieldName>,
    /// Human readable label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Field data type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Tooltip/help text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Format string (e.g. email, phone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Physical column name; defaults to the field key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column_name: Option<String>,
    /// Whether a value is required (NOT NULL).
    #[serde(default)]
    pub required: bool,
    /// Whether the field is searchable.
    #[serde(default)]
    pub searchable: bool,
    /// Whether the field holds multiple values (stored as JSON).
    #[serde(default)]
    pub multiple: bool,
    /// Whether values are unique.
    #[serde(default)]
    pub unique: bool,
    /// Default value (any JSON; `null` is kept).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_value: Option<Value>,
    /// Maximum character length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<f64>,
    /// Minimum character length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<f64>,
    /// Total digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    /// Decimal places.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// Minimum value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Maximum value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Static options of select-like fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<SelectOption>>,
    /// Target object of a lookup/master_detail field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Filters applied to lookup dialogs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_filters: Option<Vec<String>>,
    /// Whether editing needs read access to the master record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_requires_master_read: Option<bool>,
    /// What happens when the referenced record is deleted.
    #[serde(default)]
    pub delete_behavior: DeleteBehavior,
    /// Formula expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Roll-up summary definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_operations: Option<SummaryOperations>,
    /// Code language for syntax highlighting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Code editor theme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theme: Option<String>,
    /// Show line numbers in the code editor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_numbers: Option<bool>,
    /// Maximum rating value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rating: Option<f64>,
    /// Allow half-star ratings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_half: Option<bool>,
    /// Display a map widget for a location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_map: Option<bool>,
    /// Allow address-to-coordinate conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_geocoding: Option<bool>,
    /// Address format template (`us`, `uk`, `international`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["us", "uk", "international"]))]
    pub address_format: Option<String>,
    /// Colour value format (`hex`, `rgb`, `rgba`, `hsl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["hex", "rgb", "rgba", "hsl"]))]
    pub color_format: Option<String>,
    /// Allow an alpha channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_alpha: Option<bool>,
    /// Preset colours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset_colors: Option<Vec<String>>,
    /// Slider step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
    /// Show the slider value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_value: Option<bool>,
    /// Slider marks (value → label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marks: Option<IndexMap<String, String>>,
    /// Barcode format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["qr", "ean13", "ean8", "code128", "code39", "upca", "upce"]))]
    pub barcode_format: Option<String>,
    /// QR error-correction level (`L`, `M`, `Q`, `H`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["L", "M", "Q", "H"]))]
    pub qr_error_correction: Option<String>,
    /// Display the value below a barcode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_value: Option<bool>,
    /// Allow camera scanning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_scanning: Option<bool>,
    /// Currency configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency_config: Option<CurrencyConfig>,
    /// Vector configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector_config: Option<VectorConfig>,
    /// File/attachment configuration (opaque to the fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub file_attachment_config: Option<Value>,
    /// Field-level encryption configuration (opaque to the fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub encryption_config: Option<Value>,
    /// Masking rule (opaque to the fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub masking_rule: Option<Value>,
    /// Detailed audit trail for this field.
    #[serde(default)]
    pub audit_trail: bool,
    /// Fields this one depends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<String>>,
    /// Cache of computed values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<ComputedFieldCache>,
    /// Data quality rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_quality: Option<DataQualityRules>,
    /// Field group for layouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Formula that makes the field required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditional_required: Option<String>,
    /// Hidden from the default UI.
    #[serde(default)]
    pub hidden: bool,
    /// Read-only in the UI.
    #[serde(default)]
    pub readonly: bool,
    /// Sortable in list views.
    #[serde(default = "default_true")]
    pub sortable: bool,
    /// Help text below the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_help_text: Option<String>,
    /// Track changes in the activity feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_feed_history: Option<bool>,
    /// Case-sensitive comparisons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_sensitive: Option<bool>,
    /// Auto-number display format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autonumber_format: Option<String>,
    /// Create a standard index on the column.
    #[serde(default)]
    pub index: bool,
    /// External id for upserts.
    #[serde(default)]
    pub external_id: bool,
    /// Fleet extension (not upstream): the field's previous name, when this field is a rename of
    /// it. Renames are never guessed from a drop plus an add; this hint makes one explicit, so
    /// the column is renamed and its values kept. Remove the hint once every tenant has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<FieldName>,
}

/// Cache configuration of a computed field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputedFieldCache {
    /// Whether caching is on.
    pub enabled: bool,
    /// TTL in seconds (0 = no expiry).
    #[schemars(range(min = 0))]
    pub ttl: f64,
    /// Field paths that invalidate the cache.
    pub invalidate_on: Vec<String>,
}

/// Data quality rules of a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataQualityRules {
    /// Enforce unique values.
    #[serde(default)]
    pub uniqueness: bool,
    /// Minimum ratio of non-null values (0–1).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1))]
    pub completeness: f64,
    /// Accuracy validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<AccuracyRule>,
}

/// Accuracy validation of a field's values against a reference source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccuracyRule {
    /// Reference data source.
    pub source: String,
    /// Minimum accuracy (0–1).
    #[schemars(range(min = 0, max = 1))]
    pub threshold: f64,
}

impl Spec for Field {
    const SPEC_NAME: &'static str = "Field";

    fn check_input(input: &Value, checks: &mut Checks) {
        let field_type = input
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let is_reference = matches!(field_type, "lookup" | "master_detail" | "tree");
        if is_reference && input.get("reference").is_none() {
            checks.at("reference", |c| {
                c.error(
                    "missing_reference",
                    format!("a {field_type} field needs `reference` (the target object)"),
                )
            });
        }
        let values = input
            .get("options")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        let mut seen = std::collections::HashSet::new();
        for value in values.filter_map(|o| o.get("value")?.as_str()) {
            if !seen.insert(value) {
                checks.at_path(&["options", value], |c| {
                    c.error("duplicate_name", "option value appears twice")
                });
            }
        }
    }
}

/// Index algorithm (upstream `Index.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IndexType {
    /// B-tree (the only kind SQLite has).
    #[default]
    Btree,
    /// Hash index (PostgreSQL `USING hash`); SQLite has none, so the fleet builds a B-tree.
    Hash,
    /// Generalized inverted index (PostgreSQL GIN); built as a B-tree here.
    Gin,
    /// Generalized search tree (PostgreSQL GiST); built as a B-tree here.
    Gist,
    /// Full-text (upstream); built as a B-tree here, with a validation warning (a SQLite
    /// full-text search needs an FTS5 virtual table, which a bundle cannot declare).
    Fulltext,
}

/// A database index declared on an object (upstream `Index`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Index name (generated when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Indexed fields, in order.
    pub fields: Vec<String>,
    /// Index algorithm.
    #[serde(default, rename = "type")]
    pub index_type: IndexType,
    /// Whether the index enforces uniqueness.
    #[serde(default)]
    pub unique: bool,
    /// Partial index condition (SQL WHERE clause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
}

impl Spec for Index {
    const SPEC_NAME: &'static str = "Index";
}

/// Object capabilities (upstream `ObjectCapabilities`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectCapabilities {
    /// Field history tracking.
    #[serde(default)]
    pub track_history: bool,
    /// Global search indexing.
    #[serde(default = "default_true")]
    pub searchable: bool,
    /// Automatic APIs.
    #[serde(default = "default_true")]
    pub api_enabled: bool,
    /// Whitelist of API operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("items" = {"type": "string", "enum": ["get", "list", "create", "update", "delete", "upsert", "bulk", "aggregate", "history", "search", "restore", "purge", "import", "export"]}))]
    pub api_methods: Option<Vec<String>>,
    /// File attachments.
    #[serde(default)]
    pub files: bool,
    /// Social feed.
    #[serde(default)]
    pub feeds: bool,
    /// Tasks and events.
    #[serde(default)]
    pub activities: bool,
    /// Soft delete with restore.
    #[serde(default = "default_true")]
    pub trash: bool,
    /// Most-recently-used list.
    #[serde(default = "default_true")]
    pub mru: bool,
    /// Record cloning.
    #[serde(default = "default_true")]
    pub clone: bool,
}

/// Record name generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordName {
    /// `text` (user-entered) or `autonumber`.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["text", "autonumber"]))]
    pub kind: String,
    /// Auto-number format pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_format: Option<String>,
    /// First auto-number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_number: Option<u64>,
}

/// Search configuration of an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchConfig {
    /// Fields indexed for full-text search.
    pub fields: Vec<String>,
    /// Fields shown in result cards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_fields: Option<Vec<String>>,
    /// Default filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<String>>,
}

/// Soft-delete configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SoftDeleteConfig {
    /// Whether soft delete is on.
    pub enabled: bool,
    /// Timestamp field.
    #[serde(default = "default_deleted_at")]
    pub field: String,
    /// Cascade to related records.
    #[serde(default)]
    pub cascade_delete: bool,
}

fn default_deleted_at() -> String {
    "deleted_at".to_owned()
}

/// An ObjectStack object definition (upstream `ObjectSchema`): one table per object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectDefinition {
    /// Machine name (snake_case), immutable; the default table name.
    pub name: ObjectName,
    /// Singular label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Plural label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plural_label: Option<String>,
    /// Developer description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Icon name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// Namespace (single lowercase word); the table becomes `{namespace}_{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9]*$"))]
    pub namespace: Option<String>,
    /// Categorisation tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Whether the object is usable.
    #[serde(default = "default_true")]
    pub active: bool,
    /// System object (protected from deletion).
    #[serde(default)]
    pub is_system: bool,
    /// Abstract base object (no table).
    #[serde(default)]
    pub r#abstract: bool,
    /// Target datasource.
    #[serde(default = "default_datasource")]
    pub datasource: String,
    /// Physical table name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_name: Option<String>,
    /// Fields by machine name, in declaration order.
    #[schemars(extend("propertyNames" = {"pattern": MACHINE_NAME_PATTERN}))]
    pub fields: IndexMap<FieldName, Field>,
    /// Indexes on the object's table: each built as a SQLite B-tree whatever its `type`;
    /// `partial` ones are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexes: Option<Vec<Index>>,
    /// Object-level validation rules (opaque to the fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<serde_json::Map<String, Value>>>")]
    pub validations: Option<Value>,
    /// Named state machines (opaque to the fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub state_machines: Option<Value>,
    /// Field used as the record's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name_field: Option<String>,
    /// Record name generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_name: Option<RecordName>,
    /// Title expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title_format: Option<String>,
    /// Primary fields for cards and lookups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_layout: Option<Vec<String>>,
    /// Search configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchConfig>,
    /// Enabled capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<ObjectCapabilities>,
    /// Soft-delete configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_delete: Option<SoftDeleteConfig>,
    /// Record type names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_types: Option<Vec<String>>,
    /// Default sharing model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["private", "read", "read_write", "full"]))]
    pub sharing_model: Option<String>,
    /// Short prefix for record ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 5))]
    pub key_prefix: Option<String>,
    /// Fleet extension (not upstream): the object's previous name, when this object is a rename
    /// of it; its table is renamed and its rows kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<ObjectName>,
    /// Actions (opaque to the fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<serde_json::Map<String, Value>>>")]
    pub actions: Option<Value>,
}

fn default_datasource() -> String {
    "default".to_owned()
}

impl ObjectDefinition {
    /// The physical table name: `tableName`, else `{namespace}_{name}`, else `name`.
    pub fn table(&self) -> String {
        match (&self.table_name, &self.namespace) {
            (Some(table), _) => table.clone(),
            (None, Some(ns)) => format!("{ns}_{}", self.name),
            (None, None) => self.name.to_string(),
        }
    }
}

/// The columns every table has besides its fields.
pub const SYSTEM_COLUMNS: [&str; 3] = ["id", "created_at", "updated_at"];

impl Spec for ObjectDefinition {
    const SPEC_NAME: &'static str = "Object";

    fn check_input(input: &Value, checks: &mut Checks) {
        let fields = input.get("fields").and_then(Value::as_object);
        checks.at("fields", |checks| {
            for (key, field) in fields.into_iter().flatten() {
                checks.at(key, |checks| {
                    if SYSTEM_COLUMNS.contains(&key.as_str()) {
                        checks.error(
                            "reserved_name",
                            format!("{key:?} is a system column every object has"),
                        );
                    }
                    match field.get("name").and_then(Value::as_str) {
                        Some(name) if name != key => checks.at("name", |c| {
                            c.error(
                                "name_mismatch",
                                format!("field name {name:?} differs from its key {key:?}"),
                            )
                        }),
                        _ => {}
                    }
                    Field::check_input(field, checks);
                });
            }
        });
        let indexes = input.get("indexes").and_then(Value::as_array);
        checks.at("indexes", |checks| {
            for (i, index) in indexes.into_iter().flatten().enumerate() {
                let label = index
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| i.to_string(), str::to_owned);
                let names = index.get("fields").and_then(Value::as_array);
                checks.at(label, |checks| {
                    // SQLite has B-trees only: any other algorithm is built as one, and said so.
                    if let Some(kind @ ("hash" | "gin" | "gist" | "fulltext")) =
                        index.get("type").and_then(Value::as_str)
                    {
                        checks.at("type", |c| {
                            c.warning(
                                "index_type_ignored",
                                format!(
                                    "a {kind} index is built as a B-tree: SQLite has no other kind (a fulltext search needs an FTS5 table, which bundles cannot declare)"
                                ),
                            )
                        });
                    }
                    if names.is_some_and(|n| n.is_empty()) {
                        checks.at("fields", |c| {
                            c.error("empty_index", "an index needs at least one field")
                        });
                    }
                    for name in names.into_iter().flatten().filter_map(Value::as_str) {
                        let known = fields.is_some_and(|f| f.contains_key(name))
                            || SYSTEM_COLUMNS.contains(&name);
                        if !known {
                            checks.at("fields", |c| {
                                c.error(
                                    "unknown_field",
                                    format!(
                                        "index names field {name:?}, which the object does not have"
                                    ),
                                )
                            });
                        }
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_value;
    use serde_json::json;

    #[test]
    fn an_index_of_a_kind_sqlite_lacks_is_a_warning_at_its_path() {
        let object = json!({
            "name": "note",
            "fields": {"body": {"type": "textarea"}},
            "indexes": [{"fields": ["body"], "type": "gin"}, {"fields": ["body"]}]
        });
        let parsed = parse_value::<ObjectDefinition>(&object).unwrap();
        let warnings: Vec<_> = parsed
            .warnings
            .iter()
            .map(|i| (i.path.as_str(), i.code.as_deref()))
            .collect();
        assert_eq!(warnings, [("indexes.0.type", Some("index_type_ignored"))]);
    }

    #[test]
    fn field_defaults_follow_upstream() {
        let f = parse_value::<Field>(&json!({"type": "text"}))
            .unwrap()
            .value;
        assert!(!f.required && !f.unique && !f.index && f.sortable);
        assert_eq!(f.delete_behavior, DeleteBehavior::SetNull);
        let out = serde_json::to_value(&f).unwrap();
        assert_eq!(out["sortable"], json!(true));
        assert_eq!(out["deleteBehavior"], json!("set_null"));
    }

    #[test]
    fn null_default_value_is_kept() {
        let f = parse_value::<Field>(&json!({"type": "text", "defaultValue": null}))
            .unwrap()
            .value;
        assert_eq!(f.default_value, Some(Value::Null));
        assert_eq!(
            serde_json::to_value(&f).unwrap()["defaultValue"],
            Value::Null
        );
    }

    #[test]
    fn object_problems_are_all_reported_with_paths() {
        let rejected = parse_value::<ObjectDefinition>(&json!({
            "name": "project_task",
            "fields": {
                "title": {"type": "txt"},
                "owner": {"type": "lookup"},
                "Bad": {"type": "text"}
            }
        }))
        .unwrap_err();
        let paths: Vec<_> = rejected.errors().map(|i| i.path.as_str()).collect();
        assert!(paths.contains(&"fields.title.type"), "{paths:?}");
        assert!(paths.contains(&"fields.Bad"), "{paths:?}");
    }

    #[test]
    fn table_name_derives_from_namespace() {
        let o = parse_value::<ObjectDefinition>(
            &json!({"name": "account", "namespace": "crm", "fields": {}}),
        )
        .unwrap()
        .value;
        assert_eq!(o.table(), "crm_account");
    }
}
