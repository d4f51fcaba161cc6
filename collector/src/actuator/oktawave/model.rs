//! The JSON shapes Rally reads from Oktawave's API, named as the published Go SDK names
//! them (repository `oktawave-code/odk`): `instance_type.go`, `instance.go`, `ticket.go`,
//! `dictionary_item.go`, and the collections `api_collection_*.go` with
//! `api_collection_metadata.go`. Only the fields Rally uses are declared; the API sends
//! more, which serde skips.

use serde::{Deserialize, Serialize};

/// Ticket status "new" (dictionary 40; `DICT_TICKET_NEW` in the Terraform provider's
/// `oktawave/config.go`).
pub const TICKET_NEW: u32 = 134;
/// Ticket status "running" (`DICT_TICKET_RUNNING`).
pub const TICKET_RUNNING: u32 = 135;
/// Ticket status "succeeded" (`DICT_TICKET_SUCCEED`).
pub const TICKET_SUCCEEDED: u32 = 136;
/// Ticket status "error" (`DICT_TICKET_ERROR`).
pub const TICKET_ERROR: u32 = 137;

/// One page of a list: odk's `ApiCollection<T>` is `{"Items": [...], "Meta": {"Total": N}}`,
/// where `Total` counts the items of every page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// This page's items.
    #[serde(rename = "Items", default = "Vec::new")]
    pub items: Vec<T>,
    /// The collection's metadata.
    #[serde(rename = "Meta", default)]
    pub meta: Option<PageMeta>,
}

/// `ApiCollectionMetadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageMeta {
    /// Items in the whole collection (all pages).
    #[serde(rename = "Total", default)]
    pub total: u64,
}

/// One Oktawave instance type (`InstanceType`, from `GET /instances/types`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceType {
    /// Type id (what `change_type_ticket` takes as `typeId`).
    pub id: u32,
    /// Type name.
    #[serde(default)]
    pub name: String,
    /// vCPUs ("Number of CPU").
    #[serde(default)]
    pub cpu: u32,
    /// RAM in MB ("Memory in MB").
    #[serde(default)]
    pub ram: u64,
}

/// An instance as `GET /instances/{id}` describes it (`Instance`; the fields Rally reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    /// Instance id.
    pub id: u64,
    /// vCPUs ("Number of CPUs").
    #[serde(default)]
    pub cpu_number: u32,
    /// RAM in MB ("Memory in MB").
    #[serde(default)]
    pub ram_mb: u64,
    /// "If the instance is locked by a running operation": no other may start.
    #[serde(default)]
    pub is_locked: bool,
}

/// A dictionary item (`DictionaryItem`: `{"Id": 136, "Label": "Succeeded"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DictionaryItem {
    /// Item id.
    pub id: u32,
    /// Label (in the account's language).
    #[serde(default)]
    pub label: String,
}

/// A ticket: one asynchronous operation (`Ticket`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ticket {
    /// Ticket id (int64 in the SDK).
    pub id: u64,
    /// When it was created.
    #[serde(default)]
    pub creation_date: Option<String>,
    /// When the operation ended; absent, null or the zero date while it runs.
    #[serde(default)]
    pub end_date: Option<String>,
    /// Its status (134 new, 135 running, 136 succeeded, 137 error).
    #[serde(default)]
    pub status: Option<DictionaryItem>,
    /// What the operation does.
    #[serde(default)]
    pub operation_type: Option<DictionaryItem>,
    /// "Object identifier on which the operation is performed" (the instance id).
    #[serde(default)]
    pub object_id: Option<u64>,
    /// Percent done.
    #[serde(default)]
    pub progress: Option<u32>,
}

impl Ticket {
    /// Whether the operation ended: `EndDate` is set. The Terraform provider's
    /// `waitForTicket` (`oktawave/utils.go`) polls while `EndDate.IsZero()`, so an unset
    /// date may also arrive as Go's zero time (year 1).
    pub fn ended(&self) -> bool {
        self.end_date
            .as_deref()
            .is_some_and(|d| !d.is_empty() && !d.starts_with("0001-"))
    }

    /// The status id (0 if absent).
    pub fn status_id(&self) -> u32 {
        self.status.as_ref().map_or(0, |s| s.id)
    }

    /// `CreationDate` as a time, when it parses (RFC 3339).
    pub fn created_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = self.creation_date.as_deref()?;
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn ticket(end: Option<&str>) -> Ticket {
        Ticket {
            id: 1,
            creation_date: Some("2026-01-15T10:04:00+01:00".into()),
            end_date: end.map(str::to_owned),
            status: None,
            operation_type: None,
            object_id: Some(501),
            progress: None,
        }
    }

    #[test]
    fn tickets_end_when_end_date_is_set() {
        assert!(!ticket(None).ended());
        assert!(!ticket(Some("0001-01-01T00:00:00Z")).ended());
        assert!(ticket(Some("2026-01-15T10:04:31.52+01:00")).ended());
        assert_eq!(
            ticket(None).created_at().unwrap().to_rfc3339(),
            "2026-01-15T09:04:00+00:00"
        );
    }

    #[test]
    fn a_page_reads_items_and_the_total() {
        let page: Page<InstanceType> = serde_json::from_str(
            r#"{"Items":[{"Id":1047,"Name":"v1.standard-2.4","Cpu":2,"Ram":4096,
            "AvailableForFreemium":false,"Category":{"Id":1,"Label":"x"}}],"Meta":{"Total":9}}"#,
        )
        .unwrap();
        assert_eq!(page.items[0].id, 1047);
        assert_eq!((page.items[0].cpu, page.items[0].ram), (2, 4096));
        assert_eq!(page.meta, Some(PageMeta { total: 9 }));
    }

    #[test]
    fn an_instance_reads_the_sdk_field_names() {
        let i: Instance = serde_json::from_str(
            r#"{"Id":501,"CpuNumber":2,"RamMb":4096,"IsLocked":true,"Type":{"Id":1047,"Label":"x"}}"#,
        )
        .unwrap();
        assert_eq!((i.cpu_number, i.ram_mb, i.is_locked), (2, 4096, true));
    }
}
