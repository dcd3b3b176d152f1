# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FieldStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESENT: _ClassVar[FieldStatus]
    NOT_FOUND: _ClassVar[FieldStatus]
    EXPIRED: _ClassVar[FieldStatus]
    UNAVAILABLE: _ClassVar[FieldStatus]

PRESENT: FieldStatus
NOT_FOUND: FieldStatus
EXPIRED: FieldStatus
UNAVAILABLE: FieldStatus

class Value(_message.Message):
    __slots__ = (
        "int64_val",
        "double_val",
        "string_val",
        "bytes_val",
        "bool_val",
        "timestamp_us_val",
        "double_list_val",
        "int64_list_val",
        "bool_list_val",
    )
    INT64_VAL_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VAL_FIELD_NUMBER: _ClassVar[int]
    STRING_VAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_VAL_FIELD_NUMBER: _ClassVar[int]
    BOOL_VAL_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_VAL_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_LIST_VAL_FIELD_NUMBER: _ClassVar[int]
    INT64_LIST_VAL_FIELD_NUMBER: _ClassVar[int]
    BOOL_LIST_VAL_FIELD_NUMBER: _ClassVar[int]
    int64_val: int
    double_val: float
    string_val: str
    bytes_val: bytes
    bool_val: bool
    timestamp_us_val: int
    double_list_val: DoubleList
    int64_list_val: Int64List
    bool_list_val: BoolList
    def __init__(
        self,
        int64_val: _Optional[int] = ...,
        double_val: _Optional[float] = ...,
        string_val: _Optional[str] = ...,
        bytes_val: _Optional[bytes] = ...,
        bool_val: _Optional[bool] = ...,
        timestamp_us_val: _Optional[int] = ...,
        double_list_val: _Optional[_Union[DoubleList, _Mapping]] = ...,
        int64_list_val: _Optional[_Union[Int64List, _Mapping]] = ...,
        bool_list_val: _Optional[_Union[BoolList, _Mapping]] = ...,
    ) -> None: ...

class DoubleList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Int64List(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class BoolList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bool]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ValueList(_message.Message):
    __slots__ = ("values", "ints", "doubles", "strings", "bools", "nulls")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    DOUBLES_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    BOOLS_FIELD_NUMBER: _ClassVar[int]
    NULLS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    ints: _containers.RepeatedScalarFieldContainer[int]
    doubles: _containers.RepeatedScalarFieldContainer[float]
    strings: _containers.RepeatedScalarFieldContainer[str]
    bools: _containers.RepeatedScalarFieldContainer[bool]
    nulls: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(
        self,
        values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...,
        ints: _Optional[_Iterable[int]] = ...,
        doubles: _Optional[_Iterable[float]] = ...,
        strings: _Optional[_Iterable[str]] = ...,
        bools: _Optional[_Iterable[bool]] = ...,
        nulls: _Optional[_Iterable[bool]] = ...,
    ) -> None: ...

class FeatureColumn(_message.Message):
    __slots__ = ("name", "values", "statuses", "doubles", "ints", "bools", "strings", "nulls")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    DOUBLES_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    BOOLS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    NULLS_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedCompositeFieldContainer[Value]
    statuses: _containers.RepeatedScalarFieldContainer[FieldStatus]
    doubles: DoubleList
    ints: Int64List
    bools: BoolList
    strings: StringList
    nulls: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(
        self,
        name: _Optional[str] = ...,
        values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...,
        statuses: _Optional[_Iterable[_Union[FieldStatus, str]]] = ...,
        doubles: _Optional[_Union[DoubleList, _Mapping]] = ...,
        ints: _Optional[_Union[Int64List, _Mapping]] = ...,
        bools: _Optional[_Union[BoolList, _Mapping]] = ...,
        strings: _Optional[_Union[StringList, _Mapping]] = ...,
        nulls: _Optional[_Iterable[bool]] = ...,
    ) -> None: ...

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = (
        "features",
        "feature_service",
        "entities",
        "request_data",
        "full_feature_names",
        "include_event_timestamps",
        "deadline_ms",
    )
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ValueList
        def __init__(
            self, key: _Optional[str] = ..., value: _Optional[_Union[ValueList, _Mapping]] = ...
        ) -> None: ...

    class RequestDataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ValueList
        def __init__(
            self, key: _Optional[str] = ..., value: _Optional[_Union[ValueList, _Mapping]] = ...
        ) -> None: ...

    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DATA_FIELD_NUMBER: _ClassVar[int]
    FULL_FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EVENT_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[str]
    feature_service: str
    entities: _containers.MessageMap[str, ValueList]
    request_data: _containers.MessageMap[str, ValueList]
    full_feature_names: bool
    include_event_timestamps: bool
    deadline_ms: float
    def __init__(
        self,
        features: _Optional[_Iterable[str]] = ...,
        feature_service: _Optional[str] = ...,
        entities: _Optional[_Mapping[str, ValueList]] = ...,
        request_data: _Optional[_Mapping[str, ValueList]] = ...,
        full_feature_names: _Optional[bool] = ...,
        include_event_timestamps: _Optional[bool] = ...,
        deadline_ms: _Optional[float] = ...,
    ) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("columns", "degraded")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedCompositeFieldContainer[FeatureColumn]
    degraded: bool
    def __init__(
        self,
        columns: _Optional[_Iterable[_Union[FeatureColumn, _Mapping]]] = ...,
        degraded: _Optional[bool] = ...,
    ) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "entities", "request_data", "return_features", "deadline_ms", "explain")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ValueList
        def __init__(
            self, key: _Optional[str] = ..., value: _Optional[_Union[ValueList, _Mapping]] = ...
        ) -> None: ...

    class RequestDataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ValueList
        def __init__(
            self, key: _Optional[str] = ..., value: _Optional[_Union[ValueList, _Mapping]] = ...
        ) -> None: ...

    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DATA_FIELD_NUMBER: _ClassVar[int]
    RETURN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    model: str
    entities: _containers.MessageMap[str, ValueList]
    request_data: _containers.MessageMap[str, ValueList]
    return_features: bool
    deadline_ms: float
    explain: bool
    def __init__(
        self,
        model: _Optional[str] = ...,
        entities: _Optional[_Mapping[str, ValueList]] = ...,
        request_data: _Optional[_Mapping[str, ValueList]] = ...,
        return_features: _Optional[bool] = ...,
        deadline_ms: _Optional[float] = ...,
        explain: _Optional[bool] = ...,
    ) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("output", "feature_names", "base_values", "contributions")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    BASE_VALUES_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    output: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    base_values: _containers.RepeatedScalarFieldContainer[float]
    contributions: _containers.RepeatedScalarFieldContainer[float]
    def __init__(
        self,
        output: _Optional[str] = ...,
        feature_names: _Optional[_Iterable[str]] = ...,
        base_values: _Optional[_Iterable[float]] = ...,
        contributions: _Optional[_Iterable[float]] = ...,
    ) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "version", "scores", "degraded", "features", "request_id", "explanation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    scores: _containers.RepeatedScalarFieldContainer[float]
    degraded: bool
    features: _containers.RepeatedCompositeFieldContainer[FeatureColumn]
    request_id: str
    explanation: Explanation
    def __init__(
        self,
        model: _Optional[str] = ...,
        version: _Optional[int] = ...,
        scores: _Optional[_Iterable[float]] = ...,
        degraded: _Optional[bool] = ...,
        features: _Optional[_Iterable[_Union[FeatureColumn, _Mapping]]] = ...,
        request_id: _Optional[str] = ...,
        explanation: _Optional[_Union[Explanation, _Mapping]] = ...,
    ) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("feature_view", "rows", "deadline_ms", "to")
    class RowsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ValueList
        def __init__(
            self, key: _Optional[str] = ..., value: _Optional[_Union[ValueList, _Mapping]] = ...
        ) -> None: ...

    FEATURE_VIEW_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    feature_view: str
    rows: _containers.MessageMap[str, ValueList]
    deadline_ms: float
    to: str
    def __init__(
        self,
        feature_view: _Optional[str] = ...,
        rows: _Optional[_Mapping[str, ValueList]] = ...,
        deadline_ms: _Optional[float] = ...,
        to: _Optional[str] = ...,
    ) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("rows_written",)
    ROWS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    rows_written: int
    def __init__(self, rows_written: _Optional[int] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("live", "ready", "detail")
    LIVE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    live: bool
    ready: bool
    detail: str
    def __init__(
        self,
        live: _Optional[bool] = ...,
        ready: _Optional[bool] = ...,
        detail: _Optional[str] = ...,
    ) -> None: ...

class ListFeatureServicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FeatureServiceInfo(_message.Message):
    __slots__ = ("name", "features", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    features: _containers.RepeatedScalarFieldContainer[str]
    description: str
    def __init__(
        self,
        name: _Optional[str] = ...,
        features: _Optional[_Iterable[str]] = ...,
        description: _Optional[str] = ...,
    ) -> None: ...

class ListFeatureServicesResponse(_message.Message):
    __slots__ = ("feature_services",)
    FEATURE_SERVICES_FIELD_NUMBER: _ClassVar[int]
    feature_services: _containers.RepeatedCompositeFieldContainer[FeatureServiceInfo]
    def __init__(
        self, feature_services: _Optional[_Iterable[_Union[FeatureServiceInfo, _Mapping]]] = ...
    ) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = (
        "name",
        "versions",
        "aliases",
        "canary_share",
        "feature_service",
        "loaded_version",
        "explainable",
    )
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...

    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPLAINABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[int]
    aliases: _containers.ScalarMap[str, int]
    canary_share: float
    feature_service: str
    loaded_version: int
    explainable: bool
    def __init__(
        self,
        name: _Optional[str] = ...,
        versions: _Optional[_Iterable[int]] = ...,
        aliases: _Optional[_Mapping[str, int]] = ...,
        canary_share: _Optional[float] = ...,
        feature_service: _Optional[str] = ...,
        loaded_version: _Optional[int] = ...,
        explainable: _Optional[bool] = ...,
    ) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
