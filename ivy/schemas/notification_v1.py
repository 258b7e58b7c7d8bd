"""The validator of ivy/schemas/notification-v1.json, as fastjsonschema 2.22.3's
compile_to_code wrote it (``python -m ivy.schemas``); do not edit."""
# ruff: noqa
# mypy: ignore-errors
SCHEMA_SHA256 = "14e4e5973ef27cb31d5e8699febbb58fcaf36aa9e57fd60b55957675c354a4b1"
VERSION = "2.22.3"
from decimal import Decimal
from fastjsonschema import JsonSchemaValueException, JsonSchemaValuesException


NoneType = type(None)

def validate_https___github_com_ivy_queue_ivy_blob_main_ivy_schemas_notification_v1_json(data, custom_formats={}, name_prefix=None):
    if not isinstance(data, (dict)):
        raise JsonSchemaValueException("" + (name_prefix or "data") + " must be object", value=data, name="" + (name_prefix or "data") + "", definition={'$schema': 'http://json-schema.org/draft-07/schema#', '$id': 'https://github.com/ivy-queue/ivy/blob/main/ivy/schemas/notification-v1.json', 'title': 'ivy notification, protocol v1', 'description': "A task status (and, when final, its result or error) sent by a worker to a producer's notification channel.", 'type': 'object', 'required': ['ivy', 'id', 'status'], 'properties': {'ivy': {'const': 1}, 'id': {'description': 'the call id from the message', 'type': 'string', 'minLength': 1, 'maxLength': 200}, 'name': {'description': 'task name', 'type': ['string', 'null']}, 'status': {'enum': ['scheduled', 'running', 'progress', 'successful', 'errored', 'cancelled']}, 'result': {'description': "the task's return value when successful, else null"}, 'error': {'description': 'null unless errored; exception data as plain strings, never imported', 'type': ['object', 'null'], 'required': ['type', 'message'], 'properties': {'type': {'description': 'exception class name; data only, never imported', 'type': 'string'}, 'message': {'type': 'string'}, 'traceback': {'type': 'string'}}}, 'attempt': {'type': 'integer', 'minimum': 0}, 'worker': {'description': 'host:pid of the worker', 'type': ['string', 'null']}, 'progress': {'description': 'with status progress: how far the call is (ivy.current().progress)', 'type': ['object', 'null'], 'required': ['fraction'], 'properties': {'fraction': {'type': 'number', 'minimum': 0, 'maximum': 1}, 'note': {'type': ['string', 'null'], 'maxLength': 1000}}}}, 'additionalProperties': True}, rule='type')
    data_is_dict = isinstance(data, dict)
    if data_is_dict:
        data__missing_keys = set(['ivy', 'id', 'status']) - data.keys()
        if data__missing_keys:
            raise JsonSchemaValueException("" + (name_prefix or "data") + " must contain " + (str(sorted(data__missing_keys)) + " properties"), value=data, name="" + (name_prefix or "data") + "", definition={'$schema': 'http://json-schema.org/draft-07/schema#', '$id': 'https://github.com/ivy-queue/ivy/blob/main/ivy/schemas/notification-v1.json', 'title': 'ivy notification, protocol v1', 'description': "A task status (and, when final, its result or error) sent by a worker to a producer's notification channel.", 'type': 'object', 'required': ['ivy', 'id', 'status'], 'properties': {'ivy': {'const': 1}, 'id': {'description': 'the call id from the message', 'type': 'string', 'minLength': 1, 'maxLength': 200}, 'name': {'description': 'task name', 'type': ['string', 'null']}, 'status': {'enum': ['scheduled', 'running', 'progress', 'successful', 'errored', 'cancelled']}, 'result': {'description': "the task's return value when successful, else null"}, 'error': {'description': 'null unless errored; exception data as plain strings, never imported', 'type': ['object', 'null'], 'required': ['type', 'message'], 'properties': {'type': {'description': 'exception class name; data only, never imported', 'type': 'string'}, 'message': {'type': 'string'}, 'traceback': {'type': 'string'}}}, 'attempt': {'type': 'integer', 'minimum': 0}, 'worker': {'description': 'host:pid of the worker', 'type': ['string', 'null']}, 'progress': {'description': 'with status progress: how far the call is (ivy.current().progress)', 'type': ['object', 'null'], 'required': ['fraction'], 'properties': {'fraction': {'type': 'number', 'minimum': 0, 'maximum': 1}, 'note': {'type': ['string', 'null'], 'maxLength': 1000}}}}, 'additionalProperties': True}, rule='required')
        data_keys = set(data.keys())
        if "ivy" in data_keys:
            data_keys.remove("ivy")
            data__ivy = data["ivy"]
            if not (isinstance(data__ivy, (int, float)) and not isinstance(data__ivy, bool) and data__ivy == 1):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".ivy must be same as const definition: 1", value=data__ivy, name="" + (name_prefix or "data") + ".ivy", definition={'const': 1}, rule='const')
        if "id" in data_keys:
            data_keys.remove("id")
            data__id = data["id"]
            if not isinstance(data__id, (str)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".id must be string", value=data__id, name="" + (name_prefix or "data") + ".id", definition={'description': 'the call id from the message', 'type': 'string', 'minLength': 1, 'maxLength': 200}, rule='type')
            if isinstance(data__id, str):
                data__id_len = len(data__id)
                if data__id_len < 1:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".id must be longer than or equal to 1 characters", value=data__id, name="" + (name_prefix or "data") + ".id", definition={'description': 'the call id from the message', 'type': 'string', 'minLength': 1, 'maxLength': 200}, rule='minLength')
                if data__id_len > 200:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".id must be shorter than or equal to 200 characters", value=data__id, name="" + (name_prefix or "data") + ".id", definition={'description': 'the call id from the message', 'type': 'string', 'minLength': 1, 'maxLength': 200}, rule='maxLength')
        if "name" in data_keys:
            data_keys.remove("name")
            data__name = data["name"]
            if not isinstance(data__name, (str, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".name must be string or null", value=data__name, name="" + (name_prefix or "data") + ".name", definition={'description': 'task name', 'type': ['string', 'null']}, rule='type')
        if "status" in data_keys:
            data_keys.remove("status")
            data__status = data["status"]
            if not (isinstance(data__status, str) and data__status == 'scheduled' or isinstance(data__status, str) and data__status == 'running' or isinstance(data__status, str) and data__status == 'progress' or isinstance(data__status, str) and data__status == 'successful' or isinstance(data__status, str) and data__status == 'errored' or isinstance(data__status, str) and data__status == 'cancelled'):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".status must be one of ['scheduled', 'running', 'progress', 'successful', 'errored', 'cancelled']", value=data__status, name="" + (name_prefix or "data") + ".status", definition={'enum': ['scheduled', 'running', 'progress', 'successful', 'errored', 'cancelled']}, rule='enum')
        if "result" in data_keys:
            data_keys.remove("result")
            data__result = data["result"]
        if "error" in data_keys:
            data_keys.remove("error")
            data__error = data["error"]
            if not isinstance(data__error, (dict, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".error must be object or null", value=data__error, name="" + (name_prefix or "data") + ".error", definition={'description': 'null unless errored; exception data as plain strings, never imported', 'type': ['object', 'null'], 'required': ['type', 'message'], 'properties': {'type': {'description': 'exception class name; data only, never imported', 'type': 'string'}, 'message': {'type': 'string'}, 'traceback': {'type': 'string'}}}, rule='type')
            data__error_is_dict = isinstance(data__error, dict)
            if data__error_is_dict:
                data__error__missing_keys = set(['type', 'message']) - data__error.keys()
                if data__error__missing_keys:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".error must contain " + (str(sorted(data__error__missing_keys)) + " properties"), value=data__error, name="" + (name_prefix or "data") + ".error", definition={'description': 'null unless errored; exception data as plain strings, never imported', 'type': ['object', 'null'], 'required': ['type', 'message'], 'properties': {'type': {'description': 'exception class name; data only, never imported', 'type': 'string'}, 'message': {'type': 'string'}, 'traceback': {'type': 'string'}}}, rule='required')
                data__error_keys = set(data__error.keys())
                if "type" in data__error_keys:
                    data__error_keys.remove("type")
                    data__error__type = data__error["type"]
                    if not isinstance(data__error__type, (str)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".error.type must be string", value=data__error__type, name="" + (name_prefix or "data") + ".error.type", definition={'description': 'exception class name; data only, never imported', 'type': 'string'}, rule='type')
                if "message" in data__error_keys:
                    data__error_keys.remove("message")
                    data__error__message = data__error["message"]
                    if not isinstance(data__error__message, (str)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".error.message must be string", value=data__error__message, name="" + (name_prefix or "data") + ".error.message", definition={'type': 'string'}, rule='type')
                if "traceback" in data__error_keys:
                    data__error_keys.remove("traceback")
                    data__error__traceback = data__error["traceback"]
                    if not isinstance(data__error__traceback, (str)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".error.traceback must be string", value=data__error__traceback, name="" + (name_prefix or "data") + ".error.traceback", definition={'type': 'string'}, rule='type')
        if "attempt" in data_keys:
            data_keys.remove("attempt")
            data__attempt = data["attempt"]
            if not isinstance(data__attempt, (int)) and not (isinstance(data__attempt, float) and data__attempt.is_integer()) or isinstance(data__attempt, bool):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".attempt must be integer", value=data__attempt, name="" + (name_prefix or "data") + ".attempt", definition={'type': 'integer', 'minimum': 0}, rule='type')
            if isinstance(data__attempt, (int, float, Decimal)) and not isinstance(data__attempt, bool):
                if data__attempt < 0:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".attempt must be bigger than or equal to 0", value=data__attempt, name="" + (name_prefix or "data") + ".attempt", definition={'type': 'integer', 'minimum': 0}, rule='minimum')
        if "worker" in data_keys:
            data_keys.remove("worker")
            data__worker = data["worker"]
            if not isinstance(data__worker, (str, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".worker must be string or null", value=data__worker, name="" + (name_prefix or "data") + ".worker", definition={'description': 'host:pid of the worker', 'type': ['string', 'null']}, rule='type')
        if "progress" in data_keys:
            data_keys.remove("progress")
            data__progress = data["progress"]
            if not isinstance(data__progress, (dict, NoneType)):
                raise JsonSchemaValueException("" + (name_prefix or "data") + ".progress must be object or null", value=data__progress, name="" + (name_prefix or "data") + ".progress", definition={'description': 'with status progress: how far the call is (ivy.current().progress)', 'type': ['object', 'null'], 'required': ['fraction'], 'properties': {'fraction': {'type': 'number', 'minimum': 0, 'maximum': 1}, 'note': {'type': ['string', 'null'], 'maxLength': 1000}}}, rule='type')
            data__progress_is_dict = isinstance(data__progress, dict)
            if data__progress_is_dict:
                data__progress__missing_keys = set(['fraction']) - data__progress.keys()
                if data__progress__missing_keys:
                    raise JsonSchemaValueException("" + (name_prefix or "data") + ".progress must contain " + (str(sorted(data__progress__missing_keys)) + " properties"), value=data__progress, name="" + (name_prefix or "data") + ".progress", definition={'description': 'with status progress: how far the call is (ivy.current().progress)', 'type': ['object', 'null'], 'required': ['fraction'], 'properties': {'fraction': {'type': 'number', 'minimum': 0, 'maximum': 1}, 'note': {'type': ['string', 'null'], 'maxLength': 1000}}}, rule='required')
                data__progress_keys = set(data__progress.keys())
                if "fraction" in data__progress_keys:
                    data__progress_keys.remove("fraction")
                    data__progress__fraction = data__progress["fraction"]
                    if not isinstance(data__progress__fraction, (int, float, Decimal)) or isinstance(data__progress__fraction, bool):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".progress.fraction must be number", value=data__progress__fraction, name="" + (name_prefix or "data") + ".progress.fraction", definition={'type': 'number', 'minimum': 0, 'maximum': 1}, rule='type')
                    if isinstance(data__progress__fraction, (int, float, Decimal)) and not isinstance(data__progress__fraction, bool):
                        if data__progress__fraction < 0:
                            raise JsonSchemaValueException("" + (name_prefix or "data") + ".progress.fraction must be bigger than or equal to 0", value=data__progress__fraction, name="" + (name_prefix or "data") + ".progress.fraction", definition={'type': 'number', 'minimum': 0, 'maximum': 1}, rule='minimum')
                        if data__progress__fraction > 1:
                            raise JsonSchemaValueException("" + (name_prefix or "data") + ".progress.fraction must be smaller than or equal to 1", value=data__progress__fraction, name="" + (name_prefix or "data") + ".progress.fraction", definition={'type': 'number', 'minimum': 0, 'maximum': 1}, rule='maximum')
                if "note" in data__progress_keys:
                    data__progress_keys.remove("note")
                    data__progress__note = data__progress["note"]
                    if not isinstance(data__progress__note, (str, NoneType)):
                        raise JsonSchemaValueException("" + (name_prefix or "data") + ".progress.note must be string or null", value=data__progress__note, name="" + (name_prefix or "data") + ".progress.note", definition={'type': ['string', 'null'], 'maxLength': 1000}, rule='type')
                    if isinstance(data__progress__note, str):
                        data__progress__note_len = len(data__progress__note)
                        if data__progress__note_len > 1000:
                            raise JsonSchemaValueException("" + (name_prefix or "data") + ".progress.note must be shorter than or equal to 1000 characters", value=data__progress__note, name="" + (name_prefix or "data") + ".progress.note", definition={'type': ['string', 'null'], 'maxLength': 1000}, rule='maxLength')
    return data

validate = validate_https___github_com_ivy_queue_ivy_blob_main_ivy_schemas_notification_v1_json
