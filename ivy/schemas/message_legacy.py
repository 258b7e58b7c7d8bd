"""The validator of ivy/schemas/message-legacy.json, as fastjsonschema 2.22.3's
compile_to_code wrote it (``python -m ivy.schemas``); do not edit."""
# ruff: noqa
# mypy: ignore-errors
SCHEMA_SHA256 = "7562756f34226e34d009d609a3d8e77a05dd53aada4be298dc905e69eea34699"
VERSION = "2.22.3"
from decimal import Decimal
from fastjsonschema import JsonSchemaValueException, JsonSchemaValuesException


NoneType = type(None)

def validate_https___github_com_ivy_queue_ivy_blob_main_ivy_schemas_message_legacy_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object", value=data, name="" + (name_prefix or "data") + "", definition={'$schema': 'http://json-schema.org/draft-07/schema#', '$id': 'https://github.com/ivy-queue/ivy/blob/main/ivy/schemas/message-legacy.json', 'title': 'Node.js ivy 0.2 message', 'description': "The original project's message; it carries no id and no reply_to, so it gets no notification.", 'type': 'object', 'required': ['name', 'args'], 'properties': {'name': {'type': 'string', 'minLength': 1, 'maxLength': 200}, 'args': {'type': 'array'}, 'options': {'type': 'object'}}, 'additionalProperties': False}, rule='type')
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['name', 'args']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain " + (str(sorted(data__missing_keys)) + " properties"), value=data, name="" + (name_prefix or "data") + "", definition={'$schema': 'http://json-schema.org/draft-07/schema#', '$id': 'https://github.com/ivy-queue/ivy/blob/main/ivy/schemas/message-legacy.json', 'title': 'Node.js ivy 0.2 message', 'description': "The original project's message; it carries no id and no reply_to, so it gets no notification.", 'type': 'object', 'required': ['name', 'args'], 'properties': {'name': {'type': 'string', 'minLength': 1, 'maxLength': 200}, 'args': {'type': 'array'}, 'options': {'type': 'object'}}, 'additionalProperties': False}, rule='required')
        data_keys = set(data.keys())
        if "name" in data_keys:
            data_keys.remove("name")
            data__name = data["name"]
            if not isinstance(data__name, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".name must be string", value=data__name, name="" + (name_prefix or "data") + ".name", definition={'type': 'string', 'minLength': 1, 'maxLength': 200}, rule='type')
            if isinstance(data__name, str):
                data__name_len = len(data__name)
                if data__name_len < 1:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".name must be longer than or equal to 1 characters", value=data__name, name="" + (name_prefix or "data") + ".name", definition={'type': 'string', 'minLength': 1, 'maxLength': 200}, rule='minLength')
                if data__name_len > 200:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".name must be shorter than or equal to 200 characters", value=data__name, name="" + (name_prefix or "data") + ".name", definition={'type': 'string', 'minLength': 1, 'maxLength': 200}, rule='maxLength')
        if "args" in data_keys:
            data_keys.remove("args")
            data__args = data["args"]
            if not isinstance(data__args, (list, tuple)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".args must be array", value=data__args, name="" + (name_prefix or "data") + ".args", definition={'type': 'array'}, rule='type')
        if "options" in data_keys:
            data_keys.remove("options")
            data__options = data["options"]
            if not isinstance(data__options, (dict)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".options must be object", value=data__options, name="" + (name_prefix or "data") + ".options", definition={'type': 'object'}, rule='type')
        if data_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must not contain "+str(data_keys)+" properties", value=data, name="" + (name_prefix or "data") + "", definition={'$schema': 'http://json-schema.org/draft-07/schema#', '$id': 'https://github.com/ivy-queue/ivy/blob/main/ivy/schemas/message-legacy.json', 'title': 'Node.js ivy 0.2 message', 'description': "The original project's message; it carries no id and no reply_to, so it gets no notification.", 'type': 'object', 'required': ['name', 'args'], 'properties': {'name': {'type': 'string', 'minLength': 1, 'maxLength': 200}, 'args': {'type': 'array'}, 'options': {'type': 'object'}}, 'additionalProperties': False}, rule='additionalProperties')
    return data

validate = validate_https___github_com_ivy_queue_ivy_blob_main_ivy_schemas_message_legacy_json
