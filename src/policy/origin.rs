//! TEMPORARY STUB
#[derive(Debug, Clone, PartialEq, Eq)] pub enum OriginPattern { Any }
pub fn allows(_p: Option<&[OriginPattern]>, _o: Option<&str>, _h: Option<&str>, _tls: bool, _m: bool) -> bool { true }
