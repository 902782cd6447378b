const express = require("express");
const app = express();
app.get("/", (req, res) => res.send("Hello from Express on slipway\n"));
app.listen(process.env.PORT || 5000, () => console.log("listening"));
