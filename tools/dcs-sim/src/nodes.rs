//! The simulator's node manager: builds the address space (TEP tags, advisory nodes, interlock,
//! write log) and handles client writes (engineering-range check, tamper switch, write log).

use crate::tags::{self, ids};
use crate::{SimState, WriteRecord};
use async_trait::async_trait;
use opcua::server::address_space::{
    AccessLevel, AddressSpace, NodeType, ObjectBuilder, VariableBuilder, write_node_value,
};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{InMemoryNodeManager, InMemoryNodeManagerImpl};
use opcua::server::node_manager::{RequestContext, ServerContext, WriteNode};
use opcua::sync::RwLock;
use opcua::types::{
    AttributeId, DataTypeId, DataValue, DateTime, ExtensionObject, NodeId, NumericRange, ObjectId,
    Range, StatusCode, TimestampsToReturn, VariableTypeId, Variant,
};
use std::sync::Arc;

/// The node manager type registered with the server.
pub(crate) type DcsNodeManager = InMemoryNodeManager<DcsNodes>;

/// The simulator's part of the address space.
pub(crate) struct DcsNodes {
    ns: u16,
    state: Arc<SimState>,
}

impl DcsNodes {
    pub(crate) fn new(ns: u16, state: Arc<SimState>) -> Self {
        Self { ns, state }
    }

    fn id(&self, s: &str) -> NodeId {
        NodeId::new(self.ns, s.to_owned())
    }

    fn engineering_range(&self, node: &NodeId) -> Option<(f64, f64)> {
        tags::MANIPULATED
            .iter()
            .find(|t| self.id(&tags::xmv_sp_id(t.index)) == *node)
            .map(|t| (t.low, t.high))
    }

    fn write_one(
        &self,
        address_space: &mut AddressSpace,
        context: &RequestContext,
        write: &mut WriteNode,
    ) {
        let type_tree = context.get_type_tree_for_user();
        let requested = write.value().clone();
        let node_id = requested.node_id.clone();
        let mut record = WriteRecord {
            time: DateTime::now().to_string(),
            node: node_id.to_string(),
            requested: variant_json(requested.value.value.as_ref()),
            stored: serde_json::Value::Null,
            tampered: false,
            status: String::new(),
        };
        let status = 'status: {
            let node = match address_space.validate_node_write(context, &requested, type_tree.get())
            {
                Ok(n) => n,
                Err(e) => break 'status e,
            };
            if !matches!(node, NodeType::Variable(_))
                || requested.attribute_id != AttributeId::Value
            {
                break 'status StatusCode::BadNotWritable;
            }
            let Some(value) = requested.value.value.clone() else {
                break 'status StatusCode::BadNothingToDo;
            };
            let mut stored = requested.clone();
            if let Variant::Double(x) = value {
                if let Some((lo, hi)) = self.engineering_range(&node_id)
                    && !(lo..=hi).contains(&x)
                {
                    break 'status StatusCode::BadOutOfRange;
                }
                if let Some(delta) = self.state.take_tamper() {
                    stored.value.value = Some(Variant::Double(x + delta));
                    record.tampered = true;
                }
            }
            if let Err(e) = write_node_value(node, &stored) {
                break 'status e;
            }
            record.stored = variant_json(stored.value.value.as_ref());
            if let Some(dv) = node.as_node().get_attribute(
                TimestampsToReturn::Both,
                AttributeId::Value,
                &NumericRange::None,
                &opcua::types::DataEncoding::Binary,
            ) {
                context
                    .subscriptions
                    .notify_data_change([(dv, &node_id, AttributeId::Value)].into_iter());
            }
            StatusCode::Good
        };
        write.set_status(status);
        record.status = format!("{status}");
        tracing::info!(node = %record.node, requested = %record.requested, stored = %record.stored,
            tampered = record.tampered, status = %record.status, "write");
        let (count, last) = self.state.log(record);
        let updates = [
            (self.id(ids::WRITE_LOG_COUNT), Variant::UInt32(count)),
            (self.id(ids::WRITE_LOG_LAST), Variant::from(last)),
        ];
        for (id, v) in updates {
            if let Some(NodeType::Variable(var)) = address_space.find_mut(&id) {
                var.set_data_value(DataValue::new_now(v));
            }
        }
    }
}

fn variant_json(v: Option<&Variant>) -> serde_json::Value {
    match v {
        None | Some(Variant::Empty) => serde_json::Value::Null,
        Some(Variant::Double(x)) => serde_json::json!(x),
        Some(Variant::Float(x)) => serde_json::json!(x),
        Some(Variant::Boolean(b)) => serde_json::json!(b),
        Some(Variant::UInt32(x)) => serde_json::json!(x),
        Some(Variant::Int32(x)) => serde_json::json!(x),
        Some(Variant::String(s)) => serde_json::json!(s.as_ref()),
        Some(other) => serde_json::json!(other.to_string()),
    }
}

#[async_trait]
impl InMemoryNodeManagerImpl for DcsNodes {
    async fn init(&self, address_space: &mut AddressSpace, _context: ServerContext) {
        build_address_space(self, address_space);
    }

    fn name(&self) -> &str {
        "dcs-sim"
    }

    fn namespaces(&self) -> Vec<NamespaceMetadata> {
        vec![NamespaceMetadata {
            is_namespace_subset: Some(false),
            namespace_uri: crate::NAMESPACE_URI.to_owned(),
            namespace_index: self.ns,
            ..Default::default()
        }]
    }

    async fn write(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        nodes_to_write: &mut [&mut WriteNode],
    ) -> Result<(), StatusCode> {
        let mut space = address_space.write();
        for w in nodes_to_write.iter_mut() {
            self.write_one(&mut space, context, w);
        }
        Ok(())
    }
}

fn folder(space: &mut AddressSpace, id: &NodeId, name: &str, parent: &NodeId) {
    ObjectBuilder::new(id, name, name)
        .is_folder()
        .organized_by(parent.clone())
        .insert(space);
}

#[allow(clippy::too_many_arguments)]
fn variable(
    space: &mut AddressSpace,
    id: NodeId,
    name: &str,
    description: &str,
    data_type: DataTypeId,
    value: Variant,
    writable: bool,
    parent: &NodeId,
) {
    let mut b = VariableBuilder::new(&id, name, name)
        .description(description)
        .data_type(data_type)
        .value(value)
        .access_level(AccessLevel::CURRENT_READ)
        .user_access_level(AccessLevel::CURRENT_READ)
        .organized_by(parent.clone());
    if writable {
        b = b.writable();
    }
    b.insert(space);
}

#[allow(clippy::too_many_lines)]
fn build_address_space(n: &DcsNodes, space: &mut AddressSpace) {
    let root = n.id("DCS");
    folder(space, &root, "DCS", &ObjectId::ObjectsFolder.into());
    let tep = n.id("TEP");
    folder(space, &tep, "TEP", &root);
    let meas = n.id("TEP.Measurements");
    folder(space, &meas, "Measurements", &tep);
    for t in &tags::MEASUREMENTS {
        let name = format!("XMEAS({})", t.index);
        variable(
            space,
            n.id(&tags::xmeas_id(t.index)),
            &name,
            &format!("{} [{}]", t.description, t.unit),
            DataTypeId::Double,
            Variant::Double(0.0),
            false,
            &meas,
        );
    }
    let mvs = n.id("TEP.Manipulated");
    folder(space, &mvs, "Manipulated", &tep);
    for t in &tags::MANIPULATED {
        let sp = n.id(&tags::xmv_sp_id(t.index));
        variable(
            space,
            sp.clone(),
            &format!("XMV({}).SP", t.index),
            &format!(
                "Setpoint: {} [{}], range {}..{}",
                t.description, t.unit, t.low, t.high
            ),
            DataTypeId::Double,
            Variant::Double(t.initial),
            true,
            &mvs,
        );
        let range = Range {
            low: t.low,
            high: t.high,
        };
        VariableBuilder::new(
            &n.id(&format!("{}.EURange", tags::xmv_sp_id(t.index))),
            "EURange",
            "EURange",
        )
        .data_type(DataTypeId::Range)
        .value(Variant::from(ExtensionObject::from_message(range)))
        .has_type_definition(VariableTypeId::PropertyType)
        .property_of(sp.clone())
        .insert(space);
        VariableBuilder::new(
            &n.id(&format!("{}.EngineeringUnits", tags::xmv_sp_id(t.index))),
            "EngineeringUnitsText",
            "EngineeringUnitsText",
        )
        .data_type(DataTypeId::String)
        .value(t.unit)
        .has_type_definition(VariableTypeId::PropertyType)
        .property_of(sp)
        .insert(space);
        variable(
            space,
            n.id(&tags::xmv_pv_id(t.index)),
            &format!("XMV({}).PV", t.index),
            &format!("Position: {} [{}]", t.description, t.unit),
            DataTypeId::Double,
            Variant::Double(t.initial),
            false,
            &mvs,
        );
    }
    let adv = n.id("Advisory");
    folder(space, &adv, "Advisory", &root);
    let advisory: [(&str, &str, DataTypeId, Variant); 8] = [
        (
            ids::ALARM,
            "The model raises an alarm",
            DataTypeId::Boolean,
            Variant::Boolean(false),
        ),
        (
            ids::T2,
            "Hotelling T2",
            DataTypeId::Double,
            Variant::Double(0.0),
        ),
        (ids::Q, "Q (SPE)", DataTypeId::Double, Variant::Double(0.0)),
        (
            ids::T2_LIMIT,
            "T2 control limit",
            DataTypeId::Double,
            Variant::Double(0.0),
        ),
        (
            ids::Q_LIMIT,
            "Q control limit",
            DataTypeId::Double,
            Variant::Double(0.0),
        ),
        (
            ids::CONTRIBUTORS,
            "Contributing variables",
            DataTypeId::String,
            Variant::from(""),
        ),
        (
            ids::MODEL_VERSION,
            "Model version",
            DataTypeId::String,
            Variant::from(""),
        ),
        (
            ids::LAST_UPDATE,
            "Time of the last advisory update",
            DataTypeId::DateTime,
            Variant::from(DateTime::null()),
        ),
    ];
    for (id, desc, dt, value) in advisory {
        let name = id.trim_start_matches("Advisory.");
        variable(space, n.id(id), name, desc, dt, value, true, &adv);
    }
    let il = n.id("Interlock");
    folder(space, &il, "Interlock", &root);
    variable(
        space,
        n.id(ids::REMOTE_ENABLE),
        "RemoteEnable",
        "Operator switch: remote (advisory-system) writes to setpoints are allowed",
        DataTypeId::Boolean,
        Variant::Boolean(n.state.initial_remote_enable),
        true,
        &il,
    );
    let log = n.id("WriteLog");
    folder(space, &log, "WriteLog", &root);
    variable(
        space,
        n.id(ids::WRITE_LOG_COUNT),
        "Count",
        "Number of client writes logged",
        DataTypeId::UInt32,
        Variant::UInt32(0),
        false,
        &log,
    );
    variable(
        space,
        n.id(ids::WRITE_LOG_LAST),
        "Last",
        "The last client write (JSON)",
        DataTypeId::String,
        Variant::from(""),
        false,
        &log,
    );
}
