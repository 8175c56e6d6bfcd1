//! The format check: does a dataset fit what a loss accepts and the model's outputs?

#![allow(unused_imports)]
use super::*;

impl Dataset {
    /// One line describing the layout, for error messages and the model card.
    pub fn describe(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                if c.is_list() {
                    format!("{} (list of documents)", c.name)
                } else {
                    c.name.clone()
                }
            })
            .collect();
        let label = match &self.label {
            None => "no label column".to_string(),
            Some(LabelColumn {
                name,
                values: LabelValues::Scalars(_),
            }) => format!("label column {name:?} with a number per row"),
            Some(LabelColumn {
                name,
                values: LabelValues::Lists(_),
            }) => format!("label column {name:?} with a list of numbers per row"),
        };
        format!(
            "{} text column{} ({}), {label}",
            self.columns.len(),
            if self.columns.len() == 1 { "" } else { "s" },
            columns.join(", ")
        )
    }

    /// Checks the dataset against what a loss accepts and the model's number of outputs, and
    /// returns the matching format. The error names the data's `role` (`training data`,
    /// `evaluation data`), the loss, what it accepts, what the data has, and the first row that
    /// breaks the label rule.
    pub fn check_format<'f>(
        &self,
        role: &str,
        loss: &str,
        formats: &'f [DataFormat],
        loss_num_labels: u32,
        model_num_labels: usize,
    ) -> Result<&'f DataFormat, DatasetError> {
        if loss_num_labels != 0 && loss_num_labels as usize != model_num_labels {
            return Err(DatasetError::Format(format!(
                "{loss} needs a model with {loss_num_labels} output(s) per pair, but the model \
                 has num_labels = {model_num_labels}"
            )));
        }
        if let Some(position) = self.columns.iter().position(TextColumn::is_list) {
            if position + 1 != self.columns.len() {
                return Err(DatasetError::Format(format!(
                    "{}: column {:?} holds lists of documents; only the last input column may",
                    self.origin(),
                    self.columns[position].name
                )));
            }
        }
        let last_is_list = self.columns.last().is_some_and(TextColumn::is_list);
        let mut reasons = Vec::new();
        for format in formats {
            if !format.fits_columns(self.columns.len() as u32, last_is_list) {
                continue;
            }
            match self.check_label(format.label, model_num_labels) {
                Ok(()) => return Ok(format),
                Err(reason) => reasons.push(format!("{}: {reason}", format.name)),
            }
        }
        let accepted: Vec<String> = formats
            .iter()
            .map(|f| format!("  - {}: {}", f.name, f.description))
            .collect();
        let mut message = format!(
            "the {role} does not fit {loss}.\n{loss} accepts:\n{}\n{} has: {}",
            accepted.join("\n"),
            self.origin(),
            self.describe()
        );
        for reason in reasons {
            message.push_str(&format!("\n  ({reason})"));
        }
        Err(DatasetError::Format(message))
    }

    fn check_label(&self, kind: LabelKind, num_labels: usize) -> Result<(), String> {
        let name = self.label.as_ref().map_or("label", |l| l.name.as_str());
        let values = self.label.as_ref().map(|l| &l.values);
        let row_error =
            |row: usize, what: String| format!("{}: {name} {what}", self.row_location(row));
        match (kind, values) {
            (LabelKind::None, None) => Ok(()),
            (LabelKind::None, Some(_)) => Err(format!("takes no label, but there is {name:?}")),
            (_, None) => Err(format!(
                "needs {}, but there is no label column",
                kind.describe()
            )),
            (LabelKind::ClassId, Some(LabelValues::Scalars(values))) => {
                for (row, &v) in values.iter().enumerate() {
                    if v.fract() != 0.0 || v < 0.0 || v as usize >= num_labels.max(1) {
                        return Err(row_error(
                            row,
                            format!("= {v} is not a class id below num_labels = {num_labels}"),
                        ));
                    }
                }
                Ok(())
            }
            (LabelKind::Binary, Some(LabelValues::Scalars(values))) => {
                match values.iter().position(|v| !(0.0..=1.0).contains(v)) {
                    Some(row) => Err(row_error(
                        row,
                        format!("= {} is not in [0, 1]", values[row]),
                    )),
                    None => Ok(()),
                }
            }
            (LabelKind::Score | LabelKind::Margins, Some(LabelValues::Scalars(_))) => Ok(()),
            (LabelKind::ClassProbabilities, Some(LabelValues::Lists(lists))) => {
                for (row, probabilities) in lists.iter().enumerate() {
                    if probabilities.len() != num_labels {
                        return Err(row_error(
                            row,
                            format!(
                                "has {} class probabilities for num_labels = {num_labels}",
                                probabilities.len()
                            ),
                        ));
                    }
                    if let Some(p) = probabilities.iter().find(|p| !(0.0..=1.0).contains(*p)) {
                        return Err(row_error(
                            row,
                            format!("holds {p}, not a probability in [0, 1]"),
                        ));
                    }
                }
                Ok(())
            }
            (LabelKind::Margins, Some(LabelValues::Lists(_))) => Ok(()),
            (LabelKind::ScoreList, Some(LabelValues::Lists(lists))) => {
                let Some(TextValues::Lists(documents)) = self.columns.last().map(|c| &c.values)
                else {
                    return Err("needs a document list column".into());
                };
                for (row, (labels, docs)) in lists.iter().zip(documents.iter()).enumerate() {
                    if labels.len() != docs.len() {
                        return Err(row_error(
                            row,
                            format!("has {} scores for {} documents", labels.len(), docs.len()),
                        ));
                    }
                }
                Ok(())
            }
            (kind, Some(LabelValues::Lists(_))) => Err(format!(
                "needs {}, but {name:?} holds a list per row",
                kind.describe()
            )),
            (kind, Some(LabelValues::Scalars(_))) => Err(format!(
                "needs {}, but {name:?} holds one number per row",
                kind.describe()
            )),
        }
    }
}
