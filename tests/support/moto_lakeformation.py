"""moto's server, with two Lake Formation behaviours of AWS that moto 5.2 lacks.

Run as a script (``python moto_lakeformation.py -H 127.0.0.1 -p PORT``): it patches moto's
Lake Formation backend, then runs ``moto.server``.

* ``GetResourceLFTags`` of a database or table without tags: AWS answers with no tags, moto
  raises ``KeyError`` (an HTTP 500). The tag stores default to empty lists here.
* Data cells filters: moto answers ``CreateDataCellsFilter`` with "Not yet implemented" and
  ``ListDataCellsFilter`` with nothing. Here a minimal store keeps each filter's definition as
  sent (create, update, delete, list; no row evaluation, no Glue check), so that the
  governance target's plan/apply/check cycle can be run end to end. The requests themselves
  are validated against botocore's model of the API by the client before they are sent.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any


def _patch() -> None:
    from moto.lakeformation import models, responses, urls
    from moto.lakeformation.exceptions import AlreadyExists, EntityNotFound

    original_init = models.LakeFormationBackend.__init__

    def init(self: Any, region_name: str, account_id: str) -> None:
        original_init(self, region_name, account_id)
        self.lf_database_tags = defaultdict(list)
        self.lf_table_tags = defaultdict(list)
        self.cells_filters = {}

    models.LakeFormationBackend.__init__ = init  # type: ignore[method-assign]

    def key(data: dict[str, Any]) -> tuple[str, str, str, str]:
        return data["TableCatalogId"], data["DatabaseName"], data["TableName"], data["Name"]

    def create_data_cells_filter(self: Any) -> str:
        data = self._get_param("TableData")
        store = self.lakeformation_backend.cells_filters
        if key(data) in store:
            raise AlreadyExists("A data cells filter with that name exists")
        store[key(data)] = data
        return "{}"

    def update_data_cells_filter(self: Any) -> str:
        data = self._get_param("TableData")
        store = self.lakeformation_backend.cells_filters
        if key(data) not in store:
            raise EntityNotFound
        store[key(data)] = data
        return "{}"

    def delete_data_cells_filter(self: Any) -> str:
        ident = {
            name: self._get_param(name)
            for name in ("TableCatalogId", "DatabaseName", "TableName", "Name")
        }
        if self.lakeformation_backend.cells_filters.pop(key(ident), None) is None:
            raise EntityNotFound
        return "{}"

    def list_data_cells_filter(self: Any) -> str:
        table = self._get_param("Table") or {}
        found = [
            data
            for data in self.lakeformation_backend.cells_filters.values()
            if not table
            or (data["DatabaseName"], data["TableName"])
            == (table.get("DatabaseName"), table.get("Name"))
        ]
        return json.dumps({"DataCellsFilters": found})

    for handler in (
        create_data_cells_filter,
        update_data_cells_filter,
        delete_data_cells_filter,
        list_data_cells_filter,
    ):
        setattr(responses.LakeFormationResponse, handler.__name__, handler)
    for operation in ("CreateDataCellsFilter", "UpdateDataCellsFilter", "DeleteDataCellsFilter"):
        urls.url_paths[f"{{0}}/{operation}$"] = urls.response.dispatch


if __name__ == "__main__":
    _patch()
    from moto.server import main

    main(sys.argv[1:])
